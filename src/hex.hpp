// Private: hex encoding and decoding for the library, the CLI and the tests. Encodes in
// lower case unless asked for upper; decodes either case and nothing else (no prefix, no
// white space, an even number of digits). Not installed and not exported.
// Thread-safety: pure functions. Ownership: the buffer variants write into the caller's
// memory and allocate nothing; only the std::string and std::optional ones allocate.
#ifndef APIKEYS_SRC_HEX_HPP
#define APIKEYS_SRC_HEX_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace apikeys::detail {

enum class HexCase { lower, upper };

inline constexpr char kHexLower[] = "0123456789abcdef";
inline constexpr char kHexUpper[] = "0123456789ABCDEF";

// The value of each byte as a hex digit, kNotHex for any other byte: one load per
// character, and no branch on it (Uuid::parse runs on every record a store reads; the
// CLI decodes the pepper with it).
inline constexpr std::uint8_t kNotHex = 0xFF;
inline constexpr std::array<std::uint8_t, 256> kHexValues = [] {
  std::array<std::uint8_t, 256> t{};
  for (auto& v : t) v = kNotHex;
  for (std::size_t i = 0; i < 10; ++i) t['0' + i] = static_cast<std::uint8_t>(i);
  for (std::size_t i = 0; i < 6; ++i) {
    t['a' + i] = static_cast<std::uint8_t>(10 + i);
    t['A' + i] = static_cast<std::uint8_t>(10 + i);
  }
  return t;
}();

// The value of hex digit `c` (either case), or -1.
constexpr int hex_value(char c) noexcept {
  const std::uint8_t v = kHexValues[static_cast<unsigned char>(c)];
  return v == kNotHex ? -1 : v;
}

// Writes the 2 * n hex digits of the n bytes at `bytes` to `out` (no terminating NUL).
// REQUIRES: `out` has room for 2 * n characters.
inline void hex_encode(const void* bytes, std::size_t n, char* out,
                       HexCase letters = HexCase::lower) noexcept {
  const char* digits = letters == HexCase::upper ? kHexUpper : kHexLower;
  const auto* in = static_cast<const unsigned char*>(bytes);
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 0x0F];
  }
}

// The hex of `bytes`, in a new string.
inline std::string hex_encode(std::string_view bytes, HexCase letters = HexCase::lower) {
  std::string out(2 * bytes.size(), '\0');
  hex_encode(bytes.data(), bytes.size(), out.data(), letters);
  return out;
}

// Decodes `hex` into hex.size() / 2 bytes at `out`. False, with `out` partly written,
// when the length is odd or any character is not a hex digit. Reads every digit
// whatever it finds (no early exit), so the time taken does not depend on the data.
// REQUIRES: `out` has room for hex.size() / 2 bytes.
inline bool hex_decode(std::string_view hex, void* out) noexcept {
  if (hex.size() % 2 != 0) return false;
  auto* bytes = static_cast<unsigned char*>(out);
  unsigned bad = 0;
  for (std::size_t i = 0; i < hex.size() / 2; ++i) {
    const std::uint8_t hi = kHexValues[static_cast<unsigned char>(hex[2 * i])];
    const std::uint8_t lo = kHexValues[static_cast<unsigned char>(hex[2 * i + 1])];
    bad |= static_cast<unsigned>(hi | lo) & 0xF0u;
    bytes[i] = static_cast<unsigned char>((hi << 4) | (lo & 0x0F));
  }
  return bad == 0;
}

// The bytes `hex` encodes, or nullopt when it is not hex (odd length, a non-hex digit).
inline std::optional<std::string> hex_decode(std::string_view hex) {
  std::string out(hex.size() / 2, '\0');
  if (!hex_decode(hex, out.data())) return std::nullopt;
  return out;
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_HEX_HPP
