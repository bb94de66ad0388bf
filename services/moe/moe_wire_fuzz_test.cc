// Randomized robustness test for the MoE wire format: what a peer sends an
// expert or attention worker (dispatch and combine messages) is decoded
// before anything trusts it. Mutations of valid messages (header fields,
// row counts, slot ids, lengths) must decode or fail with DataLoss or
// FailedPrecondition (an epoch mismatch); a message that decodes must lie
// within its bytes and name only the receiver's slots. Budget: common/fuzz.h.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/fuzz.h"
#include "gtest/gtest.h"
#include "services/moe/moe_wire.h"

namespace sy::moe {
namespace {

std::string Bytes(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> Vec(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

const fuzz::Dictionary& Dict() {
  // Little-endian values that matter in headers: counts, epochs, slots.
  static const fuzz::Dictionary* d = new fuzz::Dictionary{
      std::string("\x00\x01\x02\x03\x7f\x80\xfe\xff", 8),
      {std::string("\xff\xff\xff\xff", 4), std::string("\x00\x00\x00\x80", 4),
       std::string("\x01\x00\x00\x00", 4), std::string("\x00\x00\x01\x00", 4),
       std::string("\xff\xff\xff\x7f", 4), std::string(8, '\xff'), std::string(8, '\0')},
      {}};
  return *d;
}

TEST(MoeWireFuzzTest, MutatedMessagesDecodeOrFailCleanly) {
  const fuzz::Config& config = fuzz::GetConfig(0x3e55a9eull);
  std::mt19937_64 rng(config.seed);
  constexpr int64_t kHidden = 8, kEpoch = 3;
  constexpr int32_t kSlotBegin = 4, kSlotEnd = 12;
  fuzz::Tally tally;
  auto expect_refusal = [&](const absl::Status& st, const std::string& what) {
    EXPECT_TRUE(absl::IsDataLoss(st) || absl::IsFailedPrecondition(st)) << what << ": " << st;
    EXPECT_FALSE(st.message().empty()) << what;
  };
  fuzz::RunBounded(
      config, "MoE wire mutations", 1.0,
      [&](uint64_t) {
        // A valid message of a few rows, then mutated.
        const uint32_t n = static_cast<uint32_t>(fuzz::Pick(rng, 5));
        std::vector<int32_t> slots(n);
        for (auto& s : slots) s = kSlotBegin + static_cast<int32_t>(fuzz::Pick(rng, 8));
        std::vector<float> rows(n * kHidden, 0.5f);
        std::vector<uint8_t> msg;
        const bool dispatch = rng() & 1;
        if (dispatch) {
          EncodeDispatch(kEpoch, Switch{}, slots, rows, &msg);
        } else {
          EncodeCombine(kEpoch, Switch{}, rows.data(), n, n, kHidden, &msg);
        }
        std::string text = Bytes(msg);
        fuzz::Mutate(text, rng, Dict(), 4096);
        msg = Vec(text);
        if (dispatch) {
          DispatchView view;
          const absl::Status st = DecodeDispatch(msg, kHidden, kEpoch, kSlotBegin, kSlotEnd, &view);
          tally.Count(st.ok());
          if (!st.ok()) return expect_refusal(st, "dispatch");
          const auto* begin = reinterpret_cast<const char*>(msg.data());
          const auto* end = begin + msg.size();
          EXPECT_GE(reinterpret_cast<const char*>(view.slots), begin);
          EXPECT_LE(reinterpret_cast<const char*>(view.rows + view.num_rows * kHidden), end);
          for (uint32_t i = 0; i < view.num_rows; ++i) {
            EXPECT_GE(view.slots[i], kSlotBegin);
            EXPECT_LT(view.slots[i], kSlotEnd);
          }
        } else {
          const float* out = nullptr;
          uint32_t mesh_rows = 0;
          Switch next;
          const absl::Status st = DecodeCombine(msg, kEpoch, n, kHidden, &out, &mesh_rows, &next);
          tally.Count(st.ok());
          if (!st.ok()) return expect_refusal(st, "combine");
          EXPECT_LE(reinterpret_cast<const char*>(out + n * kHidden),
                    reinterpret_cast<const char*>(msg.data()) + msg.size());
        }
      },
      [] { return ::testing::Test::HasFailure(); });
  tally.Print("MoE wire");
  EXPECT_GT(tally.accepted, 0u);
  EXPECT_GT(tally.refused, 0u);
}

}  // namespace
}  // namespace sy::moe
