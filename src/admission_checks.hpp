// Private: what every bundled limiter checks of a request's rate limits before deciding
// anything (MemoryLimiter, RedisLimiter). KeyManager refuses such limits when they are
// set (normalize_rate_limits()); a store of the caller's own, or a damaged cache entry,
// could still hand them to a limiter.
// Thread-safety and ownership: a pure function over the caller's request.
#ifndef APIKEYS_SRC_ADMISSION_CHECKS_HPP
#define APIKEYS_SRC_ADMISSION_CHECKS_HPP

#include <cstddef>

#include "apikeys/error.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/types.hpp"

namespace apikeys::detail {

// Throws Error(invalid_argument), a limiter failure, when `r` holds too many rate
// limits, one out of its ranges (it would divide by zero or run time backwards), or two
// of one name (they would share one state, the later decision overwriting the earlier:
// a looser limit erasing a stricter one's count). Inline: it runs on every admission.
inline void check_admission_limits(const AdmissionRequest& r) {
  if (r.limit_count > KeyPolicyLimits::kMaxRateLimits) {
    throw Error(ErrorCode::invalid_argument, "too many rate limits in one request");
  }
  for (std::size_t i = 0; i < r.limit_count; ++i) {
    const RateLimit& l = r.limits[i];
    if (l.limit < 1 || l.limit > KeyPolicyLimits::kMaxRateLimitValue ||
        l.burst > KeyPolicyLimits::kMaxRateLimitValue ||
        l.period < KeyPolicyLimits::kMinRateLimitPeriod ||
        l.period > KeyPolicyLimits::kMaxRateLimitPeriod) {
      throw Error(ErrorCode::invalid_argument, "a rate limit is out of its ranges");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (r.limits[j].name == l.name) {
        throw Error(ErrorCode::invalid_argument, "two rate limits share one name");
      }
    }
  }
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_ADMISSION_CHECKS_HPP
