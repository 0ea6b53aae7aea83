#ifndef APIKEYS_SRC_EPOCH_HPP_
#define APIKEYS_SRC_EPOCH_HPP_

#include <array>
#include <cstddef>
#include <cstdint>

// Epoch-based reclamation: memory that readers reach without a lock is freed only once
// no reader can still hold it. doc/memory-cache.md, "Reads without a lock", gives the
// argument; in short:
//
// - A reader opens a ReadSection: it publishes the process's epoch in its thread's slot
//   (a seq_cst exchange), then loads the shared pointers (seq_cst loads), and closes
//   the section by clearing the slot.
// - A writer unlinks an object with a seq_cst store, then hands it to a Limbo, which
//   tags it with the epoch it reads after the unlink, or waits with synchronize().
// - The epoch moves from e to e + 1 only when no open section published anything but
//   e. An object tagged e is freed once the epoch reaches e + 2: every section that
//   could have loaded it before the unlink published at most e and is closed by then.
//
// A section costs the reader one exchange on a cache line of its own thread; nothing
// it does writes memory another thread reads on its path, so readers on different
// cores never take a cache line from each other.
namespace apikeys::detail {

// The calling thread's read section; nests. Thread-safe: each thread has its own.
// Throws std::bad_alloc when a thread's first section cannot allocate its slot.
class ReadSection {
 public:
  // True when the calling thread has its slot: a section then opens without locking,
  // allocating or throwing.
  [[nodiscard]] static bool attached() noexcept;

  ReadSection();
  ~ReadSection();
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;
};

// Returns once every section open when it was called has closed: what was unlinked
// before the call may then be freed. REQUIRES: the calling thread has no open section
// (it would wait for itself).
void synchronize() noexcept;

// What its owner retired, freed once no reader can reach it. Not thread-safe: the
// owner serialises every call (a shard's mutex). Holds at most kCapacity objects: a
// retire that finds it full first frees what is due, and if nothing is, waits for the
// sections that hold the oldest (synchronize()). The destructor frees everything at
// once, so it must not run while a reader of the owner's structure may be in a section.
class Limbo {
 public:
  using Free = void (*)(void*) noexcept;
  static constexpr std::size_t kCapacity = 64;
  // A retire that brings the count to a multiple of this tries to free what is due.
  static constexpr std::size_t kBatch = 16;

  Limbo() = default;
  ~Limbo();
  Limbo(const Limbo&) = delete;
  Limbo& operator=(const Limbo&) = delete;

  // Frees `p` with `free` once no section that began before this call is open.
  // REQUIRES: `p` is already unreachable from the shared structure (unlinked with a
  // seq_cst store), and the calling thread has no open section.
  void retire(void* p, Free free) noexcept;

  // Objects not yet freed.
  [[nodiscard]] std::size_t pending() const noexcept { return count_; }

  // Moves the epoch on if it can (twice, so that what was just retired can go too) and
  // frees what is due.
  void collect() noexcept;

 private:
  struct Entry {
    void* p = nullptr;
    Free free = nullptr;
    std::uint64_t epoch = 0;
  };
  void free_due(std::uint64_t now) noexcept;

  std::array<Entry, kCapacity> entries_{};
  std::size_t count_ = 0;
};

// The epoch now, one attempt to move it on, and the number of thread slots in the
// process (what Limbo uses; exposed for tests).
std::uint64_t current_epoch() noexcept;
std::uint64_t try_advance_epoch() noexcept;
std::size_t slot_count() noexcept;

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_EPOCH_HPP_
