// Shared by the libFuzzer targets: a failed invariant aborts (libFuzzer records the
// input as a crash), and a small reader that splits fuzz input into fields.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

// Not assert(): it must hold in every build type, NDEBUG included.
#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (false)

namespace fuzz {

// The pepper of the targets' hashers: 32 bytes that pass HmacSha256Hasher's pepper
// check (a run of one byte value would be refused).
inline constexpr std::string_view kPepper = "apikeys-fuzz-pepper-0123456789ab";

// Reads fields off the front of the input. Text fields end at a NUL byte (or the end
// of the input), so a seed file is readable: "title\0description\0".
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) noexcept
      : rest_(reinterpret_cast<const char*>(data), size) {}

  // One byte, or 0 once the input is used up.
  std::uint8_t byte() noexcept {
    if (rest_.empty()) return 0;
    const auto b = static_cast<std::uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return b;
  }

  // Bytes up to the next NUL (which is consumed), or the rest of the input.
  std::string_view field() noexcept {
    const auto end = rest_.find('\0');
    const std::string_view out = rest_.substr(0, end);
    rest_.remove_prefix(end == std::string_view::npos ? rest_.size() : end + 1);
    return out;
  }

  // Everything not read yet.
  std::string_view rest() noexcept {
    const std::string_view out = rest_;
    rest_ = {};
    return out;
  }

  [[nodiscard]] bool empty() const noexcept { return rest_.empty(); }

 private:
  std::string_view rest_;
};

}  // namespace fuzz
