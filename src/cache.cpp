#include "apikeys/cache.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Cache::~Cache() = default;

bool Cache::get_into(std::string_view public_key, const Digest& presented, Verdict& out) {
  std::optional<Verdict> v = get(public_key, presented);
  if (!v) return false;
  out = std::move(*v);
  return true;
}

}  // namespace apikeys
