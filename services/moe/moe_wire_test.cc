// The MoE step's wire format: round trips (rows, slots and the placement
// switch a sender announces), and every check on receipt (bad sizes, another
// placement epoch, a slot the receiver does not hold).
#include "services/moe/moe_wire.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sy::moe {
namespace {

using ::testing::HasSubstr;

TEST(MoeWireTest, DispatchRoundTripsGlobalSlots) {
  const int64_t hidden = 3;
  const std::vector<int32_t> slots = {7, 5, 6};
  const std::vector<float> rows = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<uint8_t> msg;
  EncodeDispatch(42, Switch{43, 1000}, slots, rows, &msg);
  DispatchView v;
  ASSERT_TRUE(DecodeDispatch(msg, hidden, 42, 4, 8, &v).ok());
  ASSERT_EQ(v.num_rows, 3u);
  EXPECT_EQ(v.next.epoch, 43);
  EXPECT_EQ(v.next.step, 1000u);
  EXPECT_EQ(v.slots[0], 7);
  EXPECT_EQ(v.slots[2], 6);
  EXPECT_EQ(v.rows[4], 5.0f);
}

TEST(MoeWireTest, DispatchChecksEpochSlotsAndSize) {
  std::vector<uint8_t> msg;
  EncodeDispatch(3, Switch{}, {4, 9}, std::vector<float>(4, 1.0f), &msg);
  DispatchView v;
  const absl::Status epoch = DecodeDispatch(msg, 2, 2, 4, 12, &v);
  EXPECT_EQ(epoch.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(epoch.message(), HasSubstr("dispatch for placement epoch 3, this worker serves "
                                         "epoch 2"));
  const absl::Status foreign = DecodeDispatch(msg, 2, 3, 4, 8, &v);
  EXPECT_EQ(foreign.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(foreign.message(),
              HasSubstr("row 1 names slot 9, which this worker does not hold (its slots: [4, 8))"));
  EXPECT_EQ(DecodeDispatch(msg, 3, 3, 4, 12, &v).code(), absl::StatusCode::kDataLoss);  // size
  // A dispatch of another epoch still tells the receiver about the switch
  // it announces.
  EncodeDispatch(3, Switch{4, 77}, {4, 9}, std::vector<float>(4, 1.0f), &msg);
  EXPECT_EQ(DecodeDispatch(msg, 2, 2, 4, 12, &v).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(v.next.epoch, 4);
  EXPECT_EQ(v.next.step, 77u);
  msg.resize(10);
  EXPECT_THAT(DecodeDispatch(msg, 2, 3, 4, 12, &v).message(), HasSubstr("shorter than its header"));
  msg.assign(64, 0);
  EXPECT_THAT(DecodeDispatch(msg, 2, 3, 4, 12, &v).message(), HasSubstr("bad magic"));
}

TEST(MoeWireTest, CombineRoundTripsAndChecksEpoch) {
  const std::vector<float> rows = {1, 2, 3, 4};
  std::vector<uint8_t> msg;
  EncodeCombine(5, Switch{6, 12}, rows.data(), 2, 11, 2, &msg);
  const float* got = nullptr;
  uint32_t mesh_rows = 0;
  Switch next;
  ASSERT_TRUE(DecodeCombine(msg, 5, 2, 2, &got, &mesh_rows, &next).ok());
  EXPECT_EQ(mesh_rows, 11u);
  EXPECT_EQ(next.epoch, 6);
  EXPECT_EQ(next.step, 12u);
  EXPECT_EQ(got[3], 4.0f);
  const absl::Status epoch = DecodeCombine(msg, 6, 2, 2, &got, &mesh_rows, &next);
  EXPECT_EQ(epoch.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(epoch.message(),
              HasSubstr("combine for placement epoch 5, this worker serves epoch 6"));
  EXPECT_THAT(DecodeCombine(msg, 5, 3, 2, &got, &mesh_rows, &next).message(),
              HasSubstr("combine message with 2 rows, expected 3"));
}

}  // namespace
}  // namespace sy::moe
