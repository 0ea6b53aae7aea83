#include "apikeys/store.hpp"

#include "decoy_reads.hpp"

namespace apikeys {

// Out of line so the vtable and typeinfo live in the library and user subclasses link.
Store::~Store() = default;

namespace detail {
thread_local std::uint64_t decoy_reads = 0;
}  // namespace detail

}  // namespace apikeys
