#include "apikeys/cache.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Cache::~Cache() = default;

const char* to_string(ValidationCode code) noexcept {
  switch (code) {
    case ValidationCode::valid: return "valid";
    case ValidationCode::malformed: return "malformed";
    case ValidationCode::not_found: return "not_found";
    case ValidationCode::wrong_secret: return "wrong_secret";
    case ValidationCode::expired: return "expired";
    case ValidationCode::revoked: return "revoked";
    case ValidationCode::error: return "error";
  }
  return "error";
}

}  // namespace apikeys
