// Private: wiping the std::string buffers that held a credential (a Redis password, a
// PostgreSQL connection string, a secret key being built) before their memory is freed
// or reused.
// Thread-safety: plain functions on the caller's objects, which must not be shared
// while they run. Ownership: nothing is kept.
#ifndef APIKEYS_SRC_WIPE_HPP
#define APIKEYS_SRC_WIPE_HPP

#include <openssl/crypto.h>

#include <cstddef>
#include <string>

namespace apikeys::detail {

/// Overwrites every byte of `s`'s buffer and empties it, keeping the buffer (nothing is
/// freed or allocated). The whole capacity, not just size(): a moved-from short string
/// keeps its old bytes in its inline buffer, and a shortened one past its end.
inline void wipe(std::string& s) noexcept {
  s.resize(s.capacity());  // within the capacity: writes NULs, never reallocates
  OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

/// Makes room for `extra` more characters in `s` without leaving its bytes in freed
/// memory: when the buffer must grow, they move to a new one and the old one is wiped
/// before it is freed (a std::string growing in place frees its old buffer as it is).
/// Throws std::bad_alloc (or length_error), `s` unchanged.
inline void reserve_wiped(std::string& s, std::size_t extra) {
  if (s.capacity() - s.size() >= extra) return;
  std::string bigger;
  bigger.reserve(s.size() + extra);
  bigger.assign(s);
  wipe(s);
  s.swap(bigger);  // `bigger` now holds the old, wiped buffer, freed with it
}

/// Wipes the string it was given when the scope ends, however it ends.
class WipeOnExit {
 public:
  explicit WipeOnExit(std::string& s) noexcept : s_(s) {}
  ~WipeOnExit() { wipe(s_); }
  WipeOnExit(const WipeOnExit&) = delete;
  WipeOnExit& operator=(const WipeOnExit&) = delete;

 private:
  std::string& s_;
};

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_WIPE_HPP
