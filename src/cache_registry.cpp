#include "cache_registry.hpp"

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

#include "thread_annotations.hpp"

namespace apikeys::detail {

namespace {

struct Entry {
  std::uint64_t id;
  const void* identity;
  std::shared_ptr<Cache> cache;
};

struct Registry {
  Mutex mu;
  std::vector<Entry> entries APIKEYS_GUARDED_BY(mu);  // few: one per Validator with a cache
  std::uint64_t next_id APIKEYS_GUARDED_BY(mu) = 1;
};

// Never destroyed: a Validator that outlives static destruction (a global, or one
// owned by a detached thread) still unregisters safely at exit.
Registry& registry() {
  static auto* r = new Registry;
  return *r;
}

std::vector<std::shared_ptr<Cache>> caches_of(const void* identity) {
  Registry& r = registry();
  std::vector<std::shared_ptr<Cache>> out;
  {
    MutexLock lock(r.mu);
    for (const Entry& e : r.entries) {
      if (e.identity == identity) out.push_back(e.cache);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace

CacheRegistration::CacheRegistration(const void* identity, std::shared_ptr<Cache> cache) {
  if (!cache) return;
  Registry& r = registry();
  MutexLock lock(r.mu);
  const std::uint64_t id = r.next_id++;
  r.entries.push_back(Entry{id, identity, std::move(cache)});
  id_ = id;
}

CacheRegistration::~CacheRegistration() { reset(); }

CacheRegistration& CacheRegistration::operator=(CacheRegistration&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

void CacheRegistration::reset() noexcept {
  if (id_ == 0) return;
  std::shared_ptr<Cache> released;  // dropped after the lock: a cache's destructor may block
  {
    Registry& r = registry();
    MutexLock lock(r.mu);
    // Erasing from a vector moves elements down; it never allocates.
    const auto it = std::find_if(r.entries.begin(), r.entries.end(),
                                 [this](const Entry& e) { return e.id == id_; });
    if (it != r.entries.end()) {
      released = std::move(it->cache);
      r.entries.erase(it);
    }
  }
  id_ = 0;
}

void erase_everywhere(const void* identity, std::string_view public_key) {
  // The caches are erased outside the registry's lock: an erase may do I/O (Redis), and
  // a Validator being built or destroyed meanwhile must not wait for it.
  std::exception_ptr first;
  for (const auto& cache : caches_of(identity)) {
    try {
      cache->erase(public_key);
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace apikeys::detail
