// switchyard-attention-worker: one attention worker of a cluster. Loads the
// model's dense weights, joins the mesh through the coordinator, then serves
// switchyard.internal.v1.AttentionWorker while its step loop runs the
// engine, with the routed experts on the expert workers.
//
//   switchyard-attention-worker --config cluster.yaml --index 0
#include "services/attention_worker/attention_worker_runner.h"
#include "services/cluster/worker_main.h"

int main(int argc, char** argv) {
  return sy::cluster::WorkerMain(argc, argv, /*attention=*/true,
                                 sy::attention_worker::RunAttentionWorker);
}
