// Epoch-based reclamation (src/epoch.hpp): what a writer retires is freed only after
// every read section that was open at the retire has closed, and then without waiting
// for another retire.
#include <atomic>
#include <condition_variable>
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

TEST_CASE("A thread's slot is given back when it exits", "[epoch]") {
  // Threads that each open a section and exit: the epoch still moves on, so none left a
  // section open behind it.
  for (int i = 0; i < 64; ++i) {
    std::thread([] { ReadSection section; }).join();
  }
  const std::uint64_t before = apikeys::detail::current_epoch();
  CHECK(apikeys::detail::try_advance_epoch() == before + 1);
}
