// Epoch-based reclamation (src/epoch.hpp): what a writer retires is freed only after
// every read section that was open at the retire has closed, and then without waiting
// for another retire.
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../../src/epoch.hpp"
#include "catch.hpp"

using apikeys::detail::Limbo;
using apikeys::detail::ReadSection;

namespace {

std::atomic<int> g_freed{0};
void count_free(void* p) noexcept {
  delete static_cast<int*>(p);
  g_freed.fetch_add(1);
}

// Holds a read section open on a thread of its own until release().
class Reader {
 public:
  Reader()
      : thread_([this] {
          ReadSection section;
          std::unique_lock<std::mutex> lock(mu_);
          open_ = true;
          cv_.notify_all();
          cv_.wait(lock, [this] { return release_; });
        }) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return open_; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      release_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  ~Reader() {
    if (thread_.joinable()) release();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  bool release_ = false;
  std::thread thread_;
};

}  // namespace

TEST_CASE("Limbo frees a retired object once no reader that could hold it is left", "[epoch]") {
  g_freed = 0;
  Limbo limbo;

  SECTION("no reader: freed at the next collect") {
    limbo.retire(new int(1), count_free);
    limbo.collect();
    CHECK(g_freed == 1);
    CHECK(limbo.pending() == 0);
  }

  SECTION("a section open at the retire holds it until it closes") {
    Reader reader;
    limbo.retire(new int(1), count_free);
    for (int i = 0; i < 10; ++i) limbo.collect();
    CHECK(g_freed == 0);
    CHECK(limbo.pending() == 1);
    reader.release();
    limbo.collect();
    CHECK(g_freed == 1);
  }

  SECTION("a section opened after the retire does not hold it") {
    limbo.retire(new int(1), count_free);
    Reader late;
    limbo.collect();
    // `late` published the epoch of the retire at most; two steps need it gone, so the
    // object may wait, but never past its close.
    late.release();
    limbo.collect();
    CHECK(g_freed == 1);
  }

  SECTION("nested sections on one thread close with the outermost") {
    {
      ReadSection outer;
      { ReadSection inner; }
      std::thread writer([&] {
        limbo.retire(new int(1), count_free);
        for (int i = 0; i < 10; ++i) limbo.collect();
      });
      writer.join();
      CHECK(g_freed == 0);
    }
    limbo.collect();
    CHECK(g_freed == 1);
  }

  SECTION("the destructor frees what is pending") {
    {
      Reader reader;
      Limbo local;
      local.retire(new int(1), count_free);
      local.retire(new int(2), count_free);
      reader.release();
    }
    CHECK(g_freed == 2);
  }
}

TEST_CASE("A full Limbo waits for the sections that hold its oldest object", "[epoch]") {
  g_freed = 0;
  Limbo limbo;
  Reader reader;
  for (std::size_t i = 0; i < Limbo::kCapacity; ++i) limbo.retire(new int(1), count_free);
  CHECK(limbo.pending() == Limbo::kCapacity);
  CHECK(g_freed == 0);
  std::atomic<bool> returned{false};
  std::thread writer([&] {
    limbo.retire(new int(1), count_free);  // full: must wait for `reader`
    returned = true;
  });
  // Not a timing goal: the writer gets a chance to run, and must still be waiting.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(returned.load());
  CHECK(g_freed == 0);
  reader.release();
  writer.join();
  CHECK(g_freed >= 1);
  CHECK(limbo.pending() <= Limbo::kCapacity);
}

TEST_CASE("synchronize() returns once the sections open at its call have closed", "[epoch]") {
  Reader reader;
  std::atomic<bool> returned{false};
  std::thread writer([&] {
    apikeys::detail::synchronize();
    returned = true;
  });
  // Not a timing goal: the writer gets a chance to run, and must still be waiting.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(returned.load());
  reader.release();
  writer.join();
  CHECK(returned.load());
  // With no section open it returns at once (no deadline asserted: it returns).
  apikeys::detail::synchronize();
}

namespace {

// Opens a section from a thread_local destructor, while the thread is exiting.
struct LateReader {
  ~LateReader() { ReadSection section; }
};
thread_local LateReader t_late;

// A pthread key whose destructor opens a thread's first section.
void read_at_key_exit(void*) { ReadSection section; }
pthread_key_t make_reading_key() {
  pthread_key_t key{};
  REQUIRE(pthread_key_create(&key, read_at_key_exit) == 0);
  return key;
}

}  // namespace

TEST_CASE("A thread's slot is given back when it exits", "[epoch]") {
  std::thread([] { ReadSection section; }).join();
  const std::size_t before = apikeys::detail::slot_count();
  for (int i = 0; i < 64; ++i) std::thread([] { ReadSection section; }).join();
  CHECK(apikeys::detail::slot_count() <= before + 1);
  // Also when a thread_local destructor reads while the thread exits.
  for (int i = 0; i < 64; ++i) {
    std::thread([] {
      (void)&t_late;  // built before the thread's first section
      ReadSection section;
    }).join();
  }
  CHECK(apikeys::detail::slot_count() <= before + 1);
  // And when a pthread key's destructor takes the thread's first slot at exit.
  static const pthread_key_t key = make_reading_key();
  for (int i = 0; i < 64; ++i) {
    std::thread([] { pthread_setspecific(key, &key); }).join();
  }
  CHECK(apikeys::detail::slot_count() <= before + 1);
  const std::uint64_t now = apikeys::detail::current_epoch();
  CHECK(apikeys::detail::try_advance_epoch() == now + 1);
}

TEST_CASE("A child of fork() is not held back by another thread's section", "[epoch]") {
  Reader reader;  // a section open on another thread at the fork
  // Another thread takes the epoch's mutex over and over, so that forks land while it
  // holds it: the child must not inherit it locked.
  struct Advancer {
    std::atomic<bool> stop{false};
    std::thread thread{[this] {
      while (!stop.load()) (void)apikeys::detail::try_advance_epoch();
    }};
    Advancer() = default;
    Advancer(const Advancer&) = delete;
    Advancer& operator=(const Advancer&) = delete;
    ~Advancer() {  // also when a REQUIRE below throws
      stop = true;
      thread.join();
    }
  };
  auto advancer = std::make_unique<Advancer>();
  int bad = 0;
  for (int i = 0; i < 20; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(10);  // a deadlock in the child ends it by SIGALRM, a failure below
      // Only this thread lives on: the epoch must move on, twice, and a section must
      // open (its first takes the epoch's mutex to find a slot).
      const std::uint64_t now = apikeys::detail::current_epoch();
      const bool moved = apikeys::detail::try_advance_epoch() == now + 1 &&
                         apikeys::detail::try_advance_epoch() == now + 2;
      { ReadSection section; }
      (void)apikeys::detail::slot_count();
      ::_exit(moved ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++bad;
  }
  advancer.reset();
  CHECK(bad == 0);
  // In this process the section still holds the epoch back.
  const std::uint64_t now = apikeys::detail::current_epoch();
  CHECK(apikeys::detail::try_advance_epoch() <= now + 1);
  CHECK(apikeys::detail::try_advance_epoch() <= now + 1);
}
