#ifndef MATFORMER_CORE_UTIL_STAGE_PROFILE_H_
#define MATFORMER_CORE_UTIL_STAGE_PROFILE_H_

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>

// Wall time of an engine step split by stage, for benchmarks (engine_bench
// --profile). The stages run one after another on the step's thread, each
// parallel inside, so their wall times add up to the step's.
namespace matformer {

enum class Stage {
  kEmbedding,       // token embedding, PLE vectors, rotary angles
  kNorm,            // RMSNorms and residual adds
  kQkvProjection,   // q, k, v matmuls
  kRopeAndKvWrite,  // rotary embedding, K/V into the pool
  kAttention,       // softmax(q K^T) V over the paged pool
  kOutputProjection,
  kFfnGateUp,     // the gate and up matmuls of the nested FFN
  kFfnActivation, // act(gate) * up
  kFfnDown,
  kPerLayerInput,  // the PLE gate, product and projection
  kLmHead,         // final norm and the LM head
  kCount,
};

inline constexpr const char* kStageNames[] = {
    "embedding", "norm+residual", "qkv", "rope+kv_write", "attention", "o_proj",
    "ffn_gate_up", "ffn_act", "ffn_down", "per_layer_input", "lm_head"};
static_assert(std::size(kStageNames) == static_cast<size_t>(Stage::kCount), "a name per stage");

struct StageProfile {
  std::array<double, static_cast<int>(Stage::kCount)> seconds{};
  int64_t steps = 0;

  void Clear() { *this = StageProfile(); }
};

// Charges the time since the previous mark to a stage; does nothing (not even
// read the clock) without a profile.
class StageClock {
 public:
  explicit StageClock(StageProfile* profile) : profile_(profile) {
    if (profile_ != nullptr) last_ = std::chrono::steady_clock::now();
  }
  void Mark(Stage stage) {
    if (profile_ == nullptr) return;
    const auto now = std::chrono::steady_clock::now();
    profile_->seconds[static_cast<int>(stage)] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  StageProfile* profile_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_UTIL_STAGE_PROFILE_H_
