// Shared helpers for the apikeys tests: a temporary directory (TempDir, from
// temp_dir.hpp), a fixed pepper and account ids, a KeyManager wired to in-memory parts
// with a ManualClock, and a clock whose coarse reading lags.
// Thread-safety: helpers are plain functions and values; TempDir is not shared.
// Ownership: TempDir removes its directory (recursively) when it dies.
#ifndef APIKEYS_TESTS_TEST_SUPPORT_HPP
#define APIKEYS_TESTS_TEST_SUPPORT_HPP

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "apikeys/clock.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/types.hpp"
#include "temp_dir.hpp"

#include "../../src/hex.hpp"

namespace apikeys_test {

/// 36 bytes: above the hasher's 32-byte minimum. Never use it outside tests.
inline constexpr std::string_view kTestPepper = "apikeys-test-pepper-0123456789abcdef";

/// A second pepper, for rotation tests.
inline constexpr std::string_view kTestPepper2 = "apikeys-test-pepper-2-fedcba9876543210";

/// 2025-01-01T00:00:00.000Z: where every ManualClock of the tests starts.
inline constexpr std::int64_t kTestStartMillis = 1'735'689'600'000;

inline apikeys::TimePoint test_start() { return apikeys::from_unix_millis(kTestStartMillis); }

/// A ManualClock whose coarse reading trails it by a lag the test sets, within
/// `resolution`: what the system clock's CLOCK_REALTIME_COARSE does between kernel ticks.
/// Thread-safe (atomics), so a validator's background threads may read it.
class LaggingClock final : public apikeys::Clock {
 public:
  LaggingClock(apikeys::TimePoint start, std::chrono::milliseconds resolution)
      : full_(start), resolution_(resolution) {}
  [[nodiscard]] apikeys::TimePoint now() const noexcept override { return full_.now(); }
  [[nodiscard]] apikeys::TimePoint coarse_now() const noexcept override {
    return full_.now() - std::chrono::milliseconds(lag_ms_.load());
  }
  [[nodiscard]] std::chrono::nanoseconds coarse_resolution() const noexcept override {
    return resolution_;
  }
  /// The full reading becomes `t`, the coarse one `t - lag`.
  void set(apikeys::TimePoint t, std::chrono::milliseconds lag) noexcept {
    full_.set(t);
    lag_ms_.store(lag.count());
  }
  /// Moves both readings by `d`.
  void advance(std::chrono::milliseconds d) noexcept { full_.advance(d); }

 private:
  apikeys::ManualClock full_;
  std::atomic<std::int64_t> lag_ms_{0};
  std::chrono::milliseconds resolution_;
};

/// A fixed, recognisable account id: 00000000-0000-4000-8000-0000000000NN.
inline apikeys::Uuid account_id(std::uint8_t n) {
  std::array<std::uint8_t, 16> bytes{};
  bytes[6] = 0x40;
  bytes[8] = 0x80;
  bytes[15] = n;
  return apikeys::Uuid(bytes);
}

/// A KeyManager over a MemoryStore, an HmacSha256Hasher(kTestPepper), a MemoryCache
/// and one ManualClock shared by the cache and the manager. Members are public so a
/// test can move the clock or look at the store; `manager` is declared last so it
/// dies first.
struct TestManager {
  std::shared_ptr<apikeys::ManualClock> clock;
  std::shared_ptr<apikeys::MemoryStore> store;
  std::shared_ptr<apikeys::HmacSha256Hasher> hasher;
  std::shared_ptr<apikeys::MemoryCache> cache;
  std::unique_ptr<apikeys::KeyManager> manager;

  apikeys::KeyManager* operator->() const noexcept { return manager.get(); }
};

/// Builds a TestManager. Fields of `options` left null (cache, clock) are filled with
/// the in-memory parts above; anything set is kept (so a test can change the format or
/// TTLs). Last-use recording is left as the caller set it.
inline TestManager make_manager(apikeys::KeyManagerOptions options = {}) {
  TestManager t;
  t.clock = std::make_shared<apikeys::ManualClock>(test_start());
  t.store = std::make_shared<apikeys::MemoryStore>();
  t.hasher = std::make_shared<apikeys::HmacSha256Hasher>(kTestPepper);
  if (!options.validation.clock) {
    options.validation.clock = t.clock;
  }
  if (!options.validation.cache) {
    apikeys::MemoryCacheOptions cache_options;
    cache_options.clock = options.validation.clock;
    cache_options.capacity = 10'000;
    cache_options.shards = 8;
    t.cache = std::make_shared<apikeys::MemoryCache>(cache_options);
    options.validation.cache = t.cache;
  }
  t.manager = std::make_unique<apikeys::KeyManager>(t.store, t.hasher, std::move(options));
  return t;
}

/// Bytes from a hex string ("00ff..."); for test vectors. Throws std::invalid_argument
/// when `hex` is not hex.
inline std::vector<std::uint8_t> from_hex(std::string_view hex) {
  std::vector<std::uint8_t> out(hex.size() / 2);
  if (!apikeys::detail::hex_decode(hex, out.data())) throw std::invalid_argument("not hex");
  return out;
}

/// Lower-case hex of `bytes`.
inline std::string to_hex(std::string_view bytes) { return apikeys::detail::hex_encode(bytes); }

/// Lower-case hex of `bytes`.
template <std::size_t N>
std::string to_hex(const std::array<std::uint8_t, N>& bytes) {
  return to_hex(std::string_view(reinterpret_cast<const char*>(bytes.data()), N));
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_TEST_SUPPORT_HPP
