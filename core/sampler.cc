#include "core/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace matformer {

absl::Status ValidateSamplingParams(const SamplingParams& p, int64_t vocab_size) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f || p.temperature > 100.0f) {
    return absl::InvalidArgumentError(absl::StrCat("temperature = ", p.temperature, " outside [0, 100]"));
  }
  if (p.top_k < 0 || p.top_k > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("top_k = ", p.top_k, " outside [0, ", vocab_size, "]"));
  }
  if (!std::isfinite(p.top_p) || p.top_p <= 0.0f || p.top_p > 1.0f) {
    return absl::InvalidArgumentError(absl::StrCat("top_p = ", p.top_p, " outside (0, 1]"));
  }
  return absl::OkStatus();
}

double Sampler::Uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::Sample(absl::Span<const float> logits) {
  if (params_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
  // Highest logit first; ties broken by token id so the order is deterministic.
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);
  const double max_logit = candidates_.front().first;
  std::vector<double> weights(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    weights[i] = std::exp((candidates_[i].first - max_logit) / params_.temperature);
    total += weights[i];
  }
  if (params_.top_p < 1.0f) {
    double cumulative = 0.0;
    size_t nucleus = 0;
    while (nucleus < keep && cumulative < params_.top_p * total) cumulative += weights[nucleus++];
    keep = std::max<size_t>(nucleus, 1);
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += weights[i];
  }
  double target = Uniform() * total;
  for (size_t i = 0; i < keep; ++i) {
    target -= weights[i];
    if (target < 0.0) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

double LogProbability(absl::Span<const float> logits, int32_t token) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float logit : logits) sum += std::exp(static_cast<double>(logit) - max_logit);
  return static_cast<double>(logits[token]) - max_logit - std::log(sum);
}

size_t StopMatcher::Find(const std::string& text) const {
  size_t best = std::string::npos;
  for (const std::string& stop : stops_) {
    if (!stop.empty()) best = std::min(best, text.find(stop));
  }
  return best;
}

size_t StopMatcher::PendingSuffix(const std::string& text) const {
  size_t pending = 0;
  for (const std::string& stop : stops_) {
    if (stop.empty()) continue;
    for (size_t length = std::min(stop.size() - 1, text.size()); length > pending; --length) {
      if (text.compare(text.size() - length, length, stop, 0, length) == 0) {
        pending = length;
        break;
      }
    }
  }
  return pending;
}

}  // namespace matformer
