#include "apikeys/cache.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Cache::~Cache() = default;

}  // namespace apikeys
