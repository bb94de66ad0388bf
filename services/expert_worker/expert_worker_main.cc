// switchyard-expert-worker: one expert worker of a cluster. Joins the mesh
// through the coordinator, loads only its physical slots' experts, then
// serves the lockstep MoE step: every step, for every MoE layer, receive the
// token rows of every attention worker, run the experts, send the outputs
// back.
//
//   switchyard-expert-worker --config cluster.yaml --index 0
#include "services/cluster/worker_main.h"
#include "services/expert_worker/expert_worker_runner.h"

int main(int argc, char** argv) {
  return sy::cluster::WorkerMain(argc, argv, /*attention=*/false,
                                 sy::expert_worker::RunExpertWorker);
}
