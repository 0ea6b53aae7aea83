#include "sqlite/reader_pool.hpp"

#include <atomic>
#include <cassert>
#include <iterator>
#include <thread>
#include <utility>

namespace apikeys::detail::sqlite {

ReaderPool::ReaderPool(std::chrono::steady_clock::duration snapshot_max_age)
    : snapshot_max_age_(snapshot_max_age) {
  // put() puts readers back without allocating (see there).
  idle_.reserve(kMaxIdleReaders);
}

ReaderPool::~ReaderPool() {
  {
    MutexLock lock(janitor_mu_);
    stopping_ = true;
  }
  janitor_cv_.signal_all();
  if (janitor_.joinable()) janitor_.join();
  for (std::size_t i = 0; i < kHomeSlots; ++i) {
    Reader* r = homes_[i].reader.exchange(nullptr, std::memory_order_acquire);
    assert(r != tending());  // the janitor, which puts it there, has stopped
    delete r;
  }
}

namespace {

// How many living threads have each home slot. A thread takes the slot fewest living
// threads have (the lowest such), and gives it back when it exits: threads that come
// and go one after another keep using one slot and its reader, and the threads alive at
// once spread over the slots however many came before them. Two threads starting at
// once may pick the same slot; they then share it, as a ninth thread would.
// Process-wide, as a thread is; trivially destructible, so a thread that exits during
// static destruction still finds it.
std::atomic<unsigned> g_home_users[8];

std::size_t take_home() noexcept {
  std::size_t slot = 0;
  unsigned fewest = g_home_users[0].load(std::memory_order_relaxed);
  for (std::size_t i = 1; i < std::size(g_home_users); ++i) {
    const unsigned n = g_home_users[i].load(std::memory_order_relaxed);
    if (n < fewest) {
      fewest = n;
      slot = i;
    }
  }
  g_home_users[slot].fetch_add(1, std::memory_order_relaxed);
  return slot;
}

// Gives a thread's slot back when the thread exits.
struct HomeRelease {
  std::size_t slot;
  ~HomeRelease() { g_home_users[slot].fetch_sub(1, std::memory_order_relaxed); }
};

}  // namespace

Reader* ReaderPool::tending() noexcept {
  static char marker;
  return reinterpret_cast<Reader*>(&marker);  // never dereferenced
}

std::size_t ReaderPool::home_of_this_thread() noexcept {
  static_assert(std::size(g_home_users) == kHomeSlots);
  constexpr std::size_t kNone = kHomeSlots;
  // The slot itself trivially destructible: a read from another thread_local's
  // destructor, after the release below ran, still finds it (and uses it uncounted).
  thread_local std::size_t home = kNone;
  if (home == kNone) {
    home = take_home();
    thread_local const HomeRelease release{home};
  }
  return home;
}

void ReaderPool::start_janitor() {
  if (snapshot_max_age_.count() > 0) janitor_ = std::thread([this] { run_janitor(); });
}

std::unique_ptr<Reader> ReaderPool::take() {
  Home& home = homes_[home_of_this_thread()];
  Reader* mine = home.reader.load(std::memory_order_relaxed);
  // The janitor has the slot's reader for one COMMIT: waiting for it is cheaper than
  // opening another connection (invariant 4). Not for ever: a janitor that cannot run
  // (a real-time reader on its core; a child forked while the slot held the marker,
  // where no janitor runs) sends the read to the shared list instead.
  constexpr int kMaxWaits = 1000;
  int waits = 0;
  while (mine != nullptr) {
    if (mine == tending()) {
      if (++waits > kMaxWaits) break;
      std::this_thread::yield();
      mine = home.reader.load(std::memory_order_relaxed);
    } else if (home.reader.compare_exchange_weak(mine, nullptr, std::memory_order_acquire,
                                                 std::memory_order_relaxed)) {
      return std::unique_ptr<Reader>(mine);
    }
  }
  MutexLock lock(pool_mu_);
  if (idle_.empty()) return nullptr;
  std::unique_ptr<Reader> reader = std::move(idle_.back());
  idle_.pop_back();
  return reader;
}

std::unique_ptr<Reader> ReaderPool::put(std::unique_ptr<Reader> reader) noexcept {
  Reader* empty = nullptr;
  // seq_cst, as arm_janitor()'s load and the janitor's exchange: either the janitor's
  // sweep finds this reader, or this thread sees the janitor disarmed and arms it.
  if (homes_[home_of_this_thread()].reader.compare_exchange_strong(
          empty, reader.get(), std::memory_order_seq_cst, std::memory_order_relaxed)) {
    (void)reader.release();  // the slot owns it now
    return nullptr;
  }
  return put_shared(std::move(reader));
}

std::unique_ptr<Reader> ReaderPool::put_shared(std::unique_ptr<Reader> reader) noexcept {
  MutexLock lock(pool_mu_);
  // Within the capacity reserved up front, so push_back cannot allocate: a bad_alloc
  // here, in a destructor (noexcept), would be std::terminate.
  if (idle_.size() < kMaxIdleReaders) {
    idle_.push_back(std::move(reader));
    return nullptr;
  }
  return reader;
}

void ReaderPool::arm_janitor() {
  if (janitor_armed_.load(std::memory_order_seq_cst) || !janitor_.joinable()) return;
  {
    MutexLock lock(janitor_mu_);
    janitor_armed_.store(true, std::memory_order_relaxed);
  }
  janitor_cv_.signal();
}

void ReaderPool::run_janitor() {
  MutexLock lock(janitor_mu_);
  while (!stopping_) {
    while (!stopping_ && !janitor_armed_.load()) janitor_cv_.wait(janitor_mu_);
    // Then a period, cut short only by stopping.
    const auto until = std::chrono::steady_clock::now() + kJanitorPeriod;
    while (!stopping_ && janitor_cv_.wait_until(janitor_mu_, until)) {
    }
    if (stopping_) break;
    janitor_armed_.store(false);
    lock.unlock();
    bool young_left = false;
    const auto now = std::chrono::steady_clock::now();
    const auto tend = [&](Reader& r) {
      if (!r.in_snapshot()) return;
      if (now - r.snapshot_began >= snapshot_max_age_) {
        r.end_snapshot();
      } else {
        young_left = true;
      }
    };
    {
      MutexLock pool(pool_mu_);
      for (const auto& r : idle_) tend(*r);
    }
    // A home slot's reader is tended in place: the slot holds tending() meanwhile, so
    // its thread waits for it rather than opening another (invariant 4), and a put()
    // from a thread sharing the slot goes to the shared list. seq_cst, as put()'s.
    for (std::size_t i = 0; i < kHomeSlots; ++i) {
      Home& h = homes_[i];
      Reader* r = h.reader.load(std::memory_order_seq_cst);
      while (r != nullptr &&
             !h.reader.compare_exchange_weak(r, tending(), std::memory_order_seq_cst,
                                             std::memory_order_seq_cst)) {
      }
      if (r == nullptr) continue;
      assert(r != tending());  // only this thread puts the marker there
      tend(*r);
      h.reader.store(r, std::memory_order_release);
    }
    if (young_left) janitor_armed_.store(true);
    lock.lock();
  }
}

}  // namespace apikeys::detail::sqlite
