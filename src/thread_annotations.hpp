// Clang thread-safety annotations and the annotated mutex types the library locks with.
// Private to src/. Under clang the macros expand to the attributes that -Wthread-safety
// checks (scripts/ci-analysis.sh runs that check); under every other compiler they are
// empty, so GCC builds are unchanged.
//
// Thread-safety: Mutex, SharedMutex and CondVar are what their std:: counterparts are.
// MutexLock, SharedLock and ExclusiveLock are scoped to one thread.
//
// Use:
//   detail::Mutex mu_;
//   std::vector<int> queue_ APIKEYS_GUARDED_BY(mu_);
//   void drain() APIKEYS_REQUIRES(mu_);
//   { detail::MutexLock lock(mu_); queue_.push_back(1); }
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define APIKEYS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define APIKEYS_THREAD_ANNOTATION(x)
#endif

#define APIKEYS_CAPABILITY(x) APIKEYS_THREAD_ANNOTATION(capability(x))
#define APIKEYS_SCOPED_CAPABILITY APIKEYS_THREAD_ANNOTATION(scoped_lockable)
#define APIKEYS_GUARDED_BY(x) APIKEYS_THREAD_ANNOTATION(guarded_by(x))
#define APIKEYS_PT_GUARDED_BY(x) APIKEYS_THREAD_ANNOTATION(pt_guarded_by(x))
#define APIKEYS_ACQUIRED_BEFORE(...) APIKEYS_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define APIKEYS_ACQUIRED_AFTER(...) APIKEYS_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define APIKEYS_REQUIRES(...) APIKEYS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define APIKEYS_REQUIRES_SHARED(...) \
  APIKEYS_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define APIKEYS_ACQUIRE(...) APIKEYS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define APIKEYS_ACQUIRE_SHARED(...) \
  APIKEYS_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define APIKEYS_RELEASE(...) APIKEYS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define APIKEYS_RELEASE_SHARED(...) \
  APIKEYS_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define APIKEYS_RELEASE_GENERIC(...) \
  APIKEYS_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define APIKEYS_TRY_ACQUIRE(...) APIKEYS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define APIKEYS_EXCLUDES(...) APIKEYS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define APIKEYS_ASSERT_CAPABILITY(x) APIKEYS_THREAD_ANNOTATION(assert_capability(x))
#define APIKEYS_RETURN_CAPABILITY(x) APIKEYS_THREAD_ANNOTATION(lock_returned(x))
#define APIKEYS_NO_THREAD_SAFETY_ANALYSIS APIKEYS_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace apikeys::detail {

class CondVar;

// A std::mutex the analysis knows about.
class APIKEYS_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() APIKEYS_ACQUIRE() { mu_.lock(); }
  void unlock() APIKEYS_RELEASE() { mu_.unlock(); }
  bool try_lock() APIKEYS_TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Tells the analysis the caller holds the mutex (no run-time check).
  void assert_held() const APIKEYS_ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// A std::shared_mutex the analysis knows about.
class APIKEYS_CAPABILITY("shared_mutex") SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void lock() APIKEYS_ACQUIRE() { mu_.lock(); }
  void unlock() APIKEYS_RELEASE() { mu_.unlock(); }
  void lock_shared() APIKEYS_ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() APIKEYS_RELEASE_SHARED() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

// Holds a Mutex for its scope. unlock() and lock() let a scope drop the mutex around
// work that must not run under it; the destructor releases it only if held.
class APIKEYS_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) APIKEYS_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() APIKEYS_RELEASE() {
    if (held_) mu_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void unlock() APIKEYS_RELEASE() {
    mu_.unlock();
    held_ = false;
  }
  void lock() APIKEYS_ACQUIRE() {
    mu_.lock();
    held_ = true;
  }

 private:
  Mutex& mu_;
  bool held_ = true;
};

// Holds a SharedMutex in shared mode for its scope.
class APIKEYS_SCOPED_CAPABILITY SharedLock {
 public:
  explicit SharedLock(SharedMutex& mu) APIKEYS_ACQUIRE_SHARED(mu) : mu_(mu) { mu_.lock_shared(); }
  ~SharedLock() APIKEYS_RELEASE_GENERIC() { mu_.unlock_shared(); }
  SharedLock(const SharedLock&) = delete;
  SharedLock& operator=(const SharedLock&) = delete;

 private:
  SharedMutex& mu_;
};

// Holds a SharedMutex exclusively for its scope.
class APIKEYS_SCOPED_CAPABILITY ExclusiveLock {
 public:
  explicit ExclusiveLock(SharedMutex& mu) APIKEYS_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~ExclusiveLock() APIKEYS_RELEASE() { mu_.unlock(); }
  ExclusiveLock(const ExclusiveLock&) = delete;
  ExclusiveLock& operator=(const ExclusiveLock&) = delete;

 private:
  SharedMutex& mu_;
};

// A std::condition_variable whose waits name the Mutex they release, so the analysis
// checks that the caller holds it. Every wait returns with the mutex held again;
// wake-ups can be spurious, as with std::condition_variable: callers re-check.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void wait(Mutex& mu) APIKEYS_REQUIRES(mu) {
    Adopted lock(mu);
    cv_.wait(lock.lock);
  }
  // Returns false when the deadline passed without a notification.
  template <class Clock, class Duration>
  bool wait_until(Mutex& mu, const std::chrono::time_point<Clock, Duration>& deadline)
      APIKEYS_REQUIRES(mu) {
    Adopted lock(mu);
    return cv_.wait_until(lock.lock, deadline) == std::cv_status::no_timeout;
  }
  // Returns false when the timeout passed without a notification.
  template <class Rep, class Period>
  bool wait_for(Mutex& mu, const std::chrono::duration<Rep, Period>& timeout) APIKEYS_REQUIRES(mu) {
    Adopted lock(mu);
    return cv_.wait_for(lock.lock, timeout) == std::cv_status::no_timeout;
  }
  void signal() { cv_.notify_one(); }
  void signal_all() { cv_.notify_all(); }

 private:
  // Lends the caller's held mutex to a wait and gives it back on every exit, a throw
  // included (a wait that throws has locked the mutex again): the caller's MutexLock
  // stays the only owner.
  struct Adopted {
    explicit Adopted(Mutex& mu) : lock(mu.mu_, std::adopt_lock) {}
    ~Adopted() { lock.release(); }
    Adopted(const Adopted&) = delete;
    Adopted& operator=(const Adopted&) = delete;
    std::unique_lock<std::mutex> lock;
  };

  std::condition_variable cv_;
};

}  // namespace apikeys::detail
