#include "epoch.hpp"

#include <pthread.h>

#include <atomic>
#include <cassert>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

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

thread_local Slot* t_slot = nullptr;  // trivially destructible: no TLS guard on the path

void on_fork_prepare() noexcept;
void on_fork_parent() noexcept;
void on_fork_child() noexcept;

// Every slot ever made. Slots are never freed: a thread that exits gives its slot back
// for the next new thread, so there are about as many as threads were ever alive at
// once (a thread whose slot could not be registered with the exit key, or that first
// reads in the last round of key destructors, keeps it: its state is 0 between
// sections, so it never holds the epoch back, but it is scanned by every advance). Never destroyed,
// so that a thread exiting during static destruction still finds it.
void release_slot(void* slot) noexcept;

struct Registry {
  std::mutex mu;
  std::vector<std::unique_ptr<Slot>> slots;
  // Its destructor gives a thread's slot back at exit. A pthread key, not a thread_local
  // object: glibc runs the key destructors after every thread_local destructor, and
  // again (up to PTHREAD_DESTRUCTOR_ITERATIONS rounds) for a key set anew meanwhile, so
  // a destructor of either kind that reads a cache still gives its slot back.
  pthread_key_t exit_key{};
  bool has_exit_key = false;

  Registry() {
    has_exit_key = pthread_key_create(&exit_key, release_slot) == 0;
    // In a child of fork(), only the forking thread lives on: the handlers keep the
    // mutex from being inherited locked and clear the other threads' slots, or a
    // section open elsewhere at the fork would hold the child's epoch back for good.
    pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child);
  }
};

Registry& registry() {
  static auto* r = new Registry();
  return *r;
}

void on_fork_prepare() noexcept { registry().mu.lock(); }
void on_fork_parent() noexcept { registry().mu.unlock(); }
void on_fork_child() noexcept {
  Registry& r = registry();
  for (const auto& s : r.slots) {
    if (s.get() == t_slot) continue;
    s->state.store(0, std::memory_order_relaxed);
    s->depth = 0;
    s->taken = false;
  }
  r.mu.unlock();
}

// The key's destructor, at thread exit: gives the thread's slot back.
void release_slot(void* slot) noexcept {
  auto* s = static_cast<Slot*>(slot);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  s->state.store(0, std::memory_order_release);
  s->depth = 0;
  s->taken = false;
  if (t_slot == s) t_slot = nullptr;
}

// The calling thread's slot, taken on its first section. Throws std::bad_alloc.
Slot* attach() {
  Registry& r = registry();
  Slot* s = nullptr;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    for (const auto& free : r.slots) {
      if (!free->taken) {
        s = free.get();
        break;
      }
    }
    if (s == nullptr) {
      auto fresh = std::make_unique<Slot>();
      r.slots.push_back(std::move(fresh));  // strong guarantee: nothing leaks on a throw
      s = r.slots.back().get();
    }
    s->taken = true;
  }
  t_slot = s;
  // Without a key (the process ran out of them) the slot stays taken after the thread
  // exits; its state is 0 between sections, so it never holds the epoch back.
  if (r.has_exit_key) pthread_setspecific(r.exit_key, s);
  return s;
}

}  // namespace

bool ReadSection::attached() noexcept { return t_slot != nullptr; }

ReadSection::ReadSection() {
  Slot* s = t_slot;
  if (s == nullptr) s = attach();
  if (s->depth++ == 0) {
    // An exchange, not a store: a seq_cst store compiles to a store and a full fence on
    // some compilers, an exchange to one locked instruction on x86. The epoch is a
    // seq_cst load so that it too takes its place in the one order the argument uses.
    s->state.exchange((g_epoch.load(std::memory_order_seq_cst) << 1) | 1,
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
  for (const auto& s : r.slots) {
    const std::uint64_t state = s->state.load(std::memory_order_seq_cst);
    if ((state & 1) != 0 && (state >> 1) != now) return now;  // a section from before
  }
  g_epoch.store(now + 1, std::memory_order_seq_cst);
  return now + 1;
}

std::size_t slot_count() noexcept {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.slots.size();
}

void synchronize() noexcept {
  assert(t_slot == nullptr || t_slot->depth == 0);
  const std::uint64_t target = current_epoch() + 2;
  while (try_advance_epoch() < target) std::this_thread::yield();
}

Limbo::~Limbo() {
  for (std::size_t i = 0; i < count_; ++i) entries_[i].free(entries_[i].p);
}

void Limbo::retire(void* p, Free free) noexcept {
  assert(t_slot == nullptr || t_slot->depth == 0);
  if (count_ == kCapacity) {
    collect();
    if (count_ == kCapacity) {
      // Full of objects a section may still hold: wait for those sections (a reader's
      // section lasts one lookup, unless its thread is preempted inside it).
      const std::uint64_t target = entries_[0].epoch + 2;
      std::uint64_t now = current_epoch();
      while (now < target) {
        std::this_thread::yield();
        now = try_advance_epoch();
      }
      free_due(now);
    }
  }
  // Read after the unlink: a section that loaded `p` published this epoch or an earlier one.
  entries_[count_++] = Entry{p, free, g_epoch.load(std::memory_order_seq_cst)};
  if (count_ % kBatch == 0) collect();
}

void Limbo::collect() noexcept {
  if (count_ == 0) return;
  std::uint64_t now = try_advance_epoch();
  if (entries_[count_ - 1].epoch + 2 > now) now = try_advance_epoch();
  free_due(now);
}

void Limbo::free_due(std::uint64_t now) noexcept {
  // Tags never decrease along the list: free the due prefix, move the rest up.
  std::size_t due = 0;
  while (due < count_ && entries_[due].epoch + 2 <= now) {
    entries_[due].free(entries_[due].p);
    ++due;
  }
  for (std::size_t i = due; i < count_; ++i) entries_[i - due] = entries_[i];
  count_ -= due;
}

}  // namespace apikeys::detail
