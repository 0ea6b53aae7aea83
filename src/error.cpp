#include "apikeys/error.hpp"

namespace apikeys {

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::invalid_argument: return "invalid_argument";
    case ErrorCode::not_found: return "not_found";
    case ErrorCode::already_exists: return "already_exists";
    case ErrorCode::busy: return "busy";
    case ErrorCode::storage: return "storage";
    case ErrorCode::crypto: return "crypto";
    case ErrorCode::not_supported: return "not_supported";
    case ErrorCode::conflict: return "conflict";
  }
  return "unknown";
}

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error(message), code_(code) {}

// Defined here so the vtable and typeinfo live in the library (one copy for all users).
Error::~Error() = default;

}  // namespace apikeys
