// The process-wide registry that makes a revoke or delete reach every Validator in
// the process before it returns: each Validator with a cache registers that cache under
// its store's identity (Store::identity()), and KeyManager's writes erase the key from
// every cache registered under their store's identity. The validate path never looks
// at it: the cost is paid by the (rare) writes. Design notes: doc/revocation.md.
// Thread-safety: every function is safe from many threads at once.
#ifndef APIKEYS_SRC_CACHE_REGISTRY_HPP
#define APIKEYS_SRC_CACHE_REGISTRY_HPP

#include <cstdint>
#include <memory>
#include <string_view>

#include "apikeys/cache.hpp"

namespace apikeys::detail {

// Keeps one cache registered until it is destroyed or reset. Movable, not copyable.
class CacheRegistration {
 public:
  CacheRegistration() noexcept = default;
  // Registers `cache` under `identity` (null cache: registers nothing).
  CacheRegistration(const void* identity, std::shared_ptr<Cache> cache);
  ~CacheRegistration();
  CacheRegistration(CacheRegistration&& other) noexcept : id_(other.id_) { other.id_ = 0; }
  CacheRegistration& operator=(CacheRegistration&& other) noexcept;
  CacheRegistration(const CacheRegistration&) = delete;
  CacheRegistration& operator=(const CacheRegistration&) = delete;

  void reset() noexcept;

 private:
  std::uint64_t id_ = 0;  // 0: nothing registered
};

// Erases `public_key` from every cache registered under `identity`, each cache once
// (two Validators may share one). Every cache is tried; afterwards the first exception
// any of them threw is rethrown, so the caller learns that one of them may still hold
// a verdict for the key.
void erase_everywhere(const void* identity, std::string_view public_key);

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_CACHE_REGISTRY_HPP
