#include "apikeys/version.hpp"

namespace apikeys {

const char* version() noexcept { return APIKEYS_VERSION_STRING; }

}  // namespace apikeys
