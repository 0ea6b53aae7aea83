#ifndef APIKEYS_SRC_EPOCH_HPP_
#define APIKEYS_SRC_EPOCH_HPP_

#include <cstddef>
#include <cstdint>
#include <vector>

// Epoch-based reclamation: memory that readers reach without a lock is freed only once
// no reader can still hold it. doc/memory-cache.md, "Reads without a lock", gives the
// argument; in short:
//
// - A reader opens a ReadSection: it publishes the process's epoch in its thread's slot
//   (a seq_cst store), then loads the shared pointers (seq_cst loads), and closes the
//   section by clearing the slot.
// - A writer unlinks an object with a seq_cst store, then hands it to a Limbo, which
//   tags it with the epoch it reads after the unlink.
// - The epoch moves from e to e + 1 only when no open section published anything but
//   e. An object tagged e is freed once the epoch reaches e + 2: every section that
//   could have loaded it before the unlink published at most e and is closed by then.
//
// A section costs the reader one store to a cache line of its own thread; nothing it
// does writes memory another thread reads on its path, so readers on different cores
// never take a cache line from each other.
namespace apikeys::detail {

// The calling thread's read section; nests. Thread-safe: each thread has its own.
// Throws std::bad_alloc when a thread's first section cannot allocate its slot.
class ReadSection {
 public:
  ReadSection();
  ~ReadSection();
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;
};

// What its owner retired, freed once no reader can reach it. Not thread-safe: the
// owner serialises every call (a shard's mutex). The destructor frees everything at
// once, so it must not run while a reader of the owner's structure may be in a section.
class Limbo {
 public:
  using Free = void (*)(void*) noexcept;

  Limbo() = default;
  ~Limbo();
  Limbo(const Limbo&) = delete;
  Limbo& operator=(const Limbo&) = delete;

  // Frees `p` with `free` once no section that began before this call is open.
  // REQUIRES: `p` is already unreachable from the shared structure (unlinked with a
  // seq_cst store). Never throws: without memory for its list it waits for the open
  // sections to close and frees `p` at once.
  void retire(void* p, Free free) noexcept;

  // Objects not yet freed.
  [[nodiscard]] std::size_t pending() const noexcept { return entries_.size(); }

  // Moves the epoch on if it can and frees what is due.
  void collect() noexcept;

 private:
  struct Entry {
    void* p;
    Free free;
    std::uint64_t epoch;
  };
  std::vector<Entry> entries_;
  std::size_t next_collect_ = kBatch;
  static constexpr std::size_t kBatch = 32;
};

// The epoch now, and one attempt to move it on (what Limbo uses; exposed for tests).
std::uint64_t current_epoch() noexcept;
std::uint64_t try_advance_epoch() noexcept;

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_EPOCH_HPP_
