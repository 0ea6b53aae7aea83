#include "apikeys/store.hpp"

#include "decoy_reads.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Store::~Store() = default;

namespace detail {
std::uint64_t& decoy_reads() noexcept {
  thread_local std::uint64_t reads = 0;
  return reads;
}
}  // namespace detail

}  // namespace apikeys
