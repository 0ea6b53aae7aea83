#include "epoch.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <new>
#include <thread>

namespace apikeys::detail {

namespace {

// One thread's announcement: 0 outside a section, else the epoch it published shifted
// left by one, with the low bit set. On a cache line of its own: the owner writes it on
// every section, and only an advance (a writer, rarely) reads it from elsewhere.
struct alignas(64) Slot {
  std::atomic<std::uint64_t> state{0};
  unsigned depth = 0;  // the owner thread's nesting; only the owner touches it
  bool taken = false;  // guarded by Registry::mu
};

// The epoch. Constant-initialised: a section reads it without a guard variable.
std::atomic<std::uint64_t> g_epoch{1};

// Every slot ever made. Slots are never freed: a thread that exits gives its slot back
// for the next new thread, so there are at most as many as threads were ever alive at
// once. Never destroyed, so that a thread exiting during static destruction still finds it.
struct Registry {
  std::mutex mu;
  std::vector<Slot*> slots;
};

Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

thread_local Slot* t_slot = nullptr;  // trivially destructible: no TLS guard on the path
thread_local bool t_exited = false;

// Gives the thread's slot back when the thread exits.
struct SlotRelease {
  Slot* slot = nullptr;
  SlotRelease() = default;
  SlotRelease(const SlotRelease&) = delete;
  SlotRelease& operator=(const SlotRelease&) = delete;
  ~SlotRelease() {
    t_exited = true;
    if (slot == nullptr) return;
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    slot->state.store(0, std::memory_order_release);
    slot->depth = 0;
    slot->taken = false;
    t_slot = nullptr;
  }
};

// The calling thread's slot, taken on its first section. Throws std::bad_alloc.
Slot* attach() {
  Registry& r = registry();
  Slot* s = nullptr;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    for (Slot* free : r.slots) {
      if (!free->taken) {
        s = free;
        break;
      }
    }
    if (s == nullptr) {
      r.slots.reserve(r.slots.size() + 1);
      s = new Slot();
      r.slots.push_back(s);
    }
    s->taken = true;
  }
  t_slot = s;
  // A thread already past its thread_local destructors keeps the slot for good: its
  // state is 0 between sections, so it never holds the epoch back.
  if (!t_exited) {
    static thread_local SlotRelease release;
    release.slot = s;
  }
  return s;
}

}  // namespace

ReadSection::ReadSection() {
  Slot* s = t_slot;
  if (s == nullptr) s = attach();
  if (s->depth++ == 0) {
    // An exchange, not a store: a seq_cst store compiles to a store and a full fence on
    // some compilers, an exchange to one locked instruction on x86. Either orders the
    // announcement before the section's loads of shared pointers.
    s->state.exchange((g_epoch.load(std::memory_order_relaxed) << 1) | 1,
                      std::memory_order_seq_cst);
  }
}

ReadSection::~ReadSection() {
  Slot* s = t_slot;
  if (--s->depth == 0) s->state.store(0, std::memory_order_release);
}

std::uint64_t current_epoch() noexcept { return g_epoch.load(std::memory_order_seq_cst); }

std::uint64_t try_advance_epoch() noexcept {
  Registry& r = registry();
  std::unique_lock<std::mutex> lock(r.mu, std::try_to_lock);
  const std::uint64_t now = g_epoch.load(std::memory_order_seq_cst);
  if (!lock.owns_lock()) return now;  // another writer is advancing
  for (const Slot* s : r.slots) {
    const std::uint64_t state = s->state.load(std::memory_order_seq_cst);
    if ((state & 1) != 0 && (state >> 1) != now) return now;  // a section from before
  }
  g_epoch.store(now + 1, std::memory_order_seq_cst);
  return now + 1;
}

Limbo::~Limbo() {
  for (const Entry& e : entries_) e.free(e.p);
}

void Limbo::retire(void* p, Free free) noexcept {
  // Read after the unlink: a section that loaded `p` published this epoch or an earlier one.
  const std::uint64_t tag = g_epoch.load(std::memory_order_seq_cst);
  try {
    entries_.push_back(Entry{p, free, tag});
  } catch (...) {
    // No room to keep it: wait for the sections that may hold it, then free it now.
    while (try_advance_epoch() < tag + 2) std::this_thread::yield();
    free(p);
    return;
  }
  if (entries_.size() >= next_collect_) collect();
}

void Limbo::collect() noexcept {
  if (entries_.empty()) return;
  // Two steps when the readers allow: what was retired just now is freed too.
  std::uint64_t now = try_advance_epoch();
  if (entries_.back().epoch + 2 > now) now = try_advance_epoch();
  // Tags never decrease along the list: free the due prefix.
  const auto due = std::find_if(entries_.begin(), entries_.end(),
                                [now](const Entry& e) { return e.epoch + 2 > now; });
  for (auto it = entries_.begin(); it != due; ++it) it->free(it->p);
  entries_.erase(entries_.begin(), due);
  next_collect_ = entries_.size() + kBatch;
}

}  // namespace apikeys::detail
