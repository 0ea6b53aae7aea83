#include "apikeys/validation_code.hpp"

#include <cstdint>

namespace apikeys {

namespace {

// Every enumerator has a case (-Wswitch, an error in our builds); nullptr for a value
// outside the enumeration.
constexpr const char* name_of(ValidationCode code) noexcept {
  switch (code) {
    case ValidationCode::valid: return "valid";
    case ValidationCode::malformed: return "malformed";
    case ValidationCode::not_found: return "not_found";
    case ValidationCode::wrong_secret: return "wrong_secret";
    case ValidationCode::expired: return "expired";
    case ValidationCode::revoked: return "revoked";
    case ValidationCode::error: return "error";
    case ValidationCode::disabled: return "disabled";
    case ValidationCode::insufficient_scope: return "insufficient_scope";
    case ValidationCode::rate_limited: return "rate_limited";
    case ValidationCode::usage_exceeded: return "usage_exceeded";
  }
  return nullptr;
}

// The codes are 0..kLastValidationCode with no gap, and kLastValidationCode is the last
// one named: a code appended without moving it (or moved without naming the new code)
// stops the build here.
constexpr bool all_named_up_to_last() noexcept {
  constexpr auto last = static_cast<unsigned>(kLastValidationCode);
  for (unsigned v = 0; v <= last; ++v) {
    if (name_of(static_cast<ValidationCode>(v)) == nullptr) return false;
  }
  return name_of(static_cast<ValidationCode>(last + 1)) == nullptr;
}
static_assert(all_named_up_to_last(),
              "every ValidationCode up to kLastValidationCode needs a name, and none after it "
              "may exist: see the checklist in validation_code.hpp");

}  // namespace

const char* to_string(ValidationCode code) noexcept {
  const char* name = name_of(code);
  return name != nullptr ? name : "error";
}

}  // namespace apikeys
