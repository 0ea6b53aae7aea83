#include "sqlite/reader_pool.hpp"

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
}

void ReaderPool::start_janitor() {
  if (snapshot_max_age_.count() > 0) janitor_ = std::thread([this] { run_janitor(); });
}

std::unique_ptr<Reader> ReaderPool::take() {
  MutexLock lock(pool_mu_);
  if (idle_.empty()) return nullptr;
  std::unique_ptr<Reader> reader = std::move(idle_.back());
  idle_.pop_back();
  return reader;
}

std::unique_ptr<Reader> ReaderPool::put(std::unique_ptr<Reader> reader) noexcept {
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
  if (janitor_armed_.load(std::memory_order_relaxed) || !janitor_.joinable()) return;
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
    {
      MutexLock pool(pool_mu_);
      const auto now = std::chrono::steady_clock::now();
      for (const auto& r : idle_) {
        if (!r->in_snapshot()) continue;
        if (now - r->snapshot_began >= snapshot_max_age_) {
          r->end_snapshot();
        } else {
          young_left = true;
        }
      }
    }
    if (young_left) janitor_armed_.store(true);
    lock.lock();
  }
}

}  // namespace apikeys::detail::sqlite
