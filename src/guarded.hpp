// detail::guarded: one error model for calls into a Store, which may be a user's and
// throw anything: apikeys::Error passes through, anything else becomes
// Error(storage) naming the operation. Used by KeyManager and the import.
#ifndef APIKEYS_SRC_GUARDED_HPP
#define APIKEYS_SRC_GUARDED_HPP

#include <exception>
#include <string>

#include "apikeys/error.hpp"

namespace apikeys::detail {

template <class F>
auto guarded(const char* operation, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::storage, std::string(operation) + " failed: " + e.what());
  } catch (...) {
    throw Error(ErrorCode::storage, std::string(operation) + " failed");
  }
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_GUARDED_HPP
