// Mirrors of Verdict's and ValidationResult's fields, in order, for the code that sets
// every field by hand (MemoryCache's Slot::fill(), the Validator's reset()): a field
// added to either type changes its size, on every standard library, and fails their
// static_asserts until that code sets it too. And which verdicts a caller reaches only
// with the key's own secret (secret_matched()).
#ifndef APIKEYS_SRC_RESULT_FIELDS_HPP
#define APIKEYS_SRC_RESULT_FIELDS_HPP

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "apikeys/cache.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validation_code.hpp"

namespace apikeys::detail {

struct VerdictFields {
  ValidationCode code;
  Uuid account_id;
  Uuid key_id;
  std::optional<TimePoint> expires_at;
  std::vector<std::string> scopes;
  std::string metadata;
  bool has_policy;
  Uuid lineage_id;
  std::vector<RateLimit> rate_limits;
  bool has_credits;
  bool has_admission;
};

struct ResultFields : VerdictFields {
  std::vector<std::string> missing_scopes;
  std::vector<LimitStatus> limits;
  std::optional<std::uint64_t> credits_remaining;
  std::string limited_by;
  std::chrono::milliseconds retry_after;
  bool limiter_failed;
};

// True for a verdict reached with the key's own secret (its digest matched the stored
// one): `valid`, `expired`, `revoked`, `disabled`. False for the answers a guess gets
// (wrong_secret, not_found) and any other code. MemoryCache never lets a guess's verdict
// displace one of these, and the Validator caches the negative ones no longer than a
// `valid`, so how long one shields its key says nothing of the key's state.
inline bool secret_matched(ValidationCode code) noexcept {
  switch (code) {
    case ValidationCode::valid:
    case ValidationCode::expired:
    case ValidationCode::revoked:
    case ValidationCode::disabled: return true;
    default: return false;
  }
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_RESULT_FIELDS_HPP
