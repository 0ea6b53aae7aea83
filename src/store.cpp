#include "apikeys/store.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Store::~Store() = default;

}  // namespace apikeys
