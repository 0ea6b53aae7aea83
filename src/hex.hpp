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

// The value of hex digit `c` (0-15), or a value of 16 or more when `c` is not one.
// Arithmetic only, no table and no branch: neither the time nor the memory touched
// depends on `c`, so a secret's digits (the CLI's pepper) leak nothing to a cache-timing
// observer.
constexpr unsigned hex_digit_value(unsigned char c) noexcept {
  const unsigned digit = static_cast<unsigned>(c) - '0';             // 0-9 for '0'-'9'
  const unsigned letter = (static_cast<unsigned>(c) | 0x20u) - 'a';  // 0-5 for a-f, A-F
  // All ones when the value is below the bound (the subtraction wraps), else zero.
  const unsigned is_digit = 0u - (((digit - 10u) >> 31) & ~(digit >> 31) & 1u);
  const unsigned is_letter = 0u - (((letter - 6u) >> 31) & ~(letter >> 31) & 1u);
  const unsigned value = (digit & is_digit) | ((letter + 10u) & is_letter);
  return value | (~(is_digit | is_letter) & 16u);
}

// The value of hex digit `c`, or -1 when it is not one.
constexpr int hex_value(char c) noexcept {
  const unsigned v = hex_digit_value(static_cast<unsigned char>(c));
  return v < 16 ? static_cast<int>(v) : -1;
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
// whatever it finds (no early exit, no table lookup), so neither the time taken nor the
// memory touched depends on the data.
// REQUIRES: `out` has room for hex.size() / 2 bytes.
inline bool hex_decode(std::string_view hex, void* out) noexcept {
  if (hex.size() % 2 != 0) return false;
  auto* bytes = static_cast<unsigned char*>(out);
  unsigned bad = 0;
  for (std::size_t i = 0; i < hex.size() / 2; ++i) {
    const unsigned hi = hex_digit_value(static_cast<unsigned char>(hex[2 * i]));
    const unsigned lo = hex_digit_value(static_cast<unsigned char>(hex[2 * i + 1]));
    bad |= (hi | lo) & 0xF0u;
    bytes[i] = static_cast<unsigned char>((hi << 4) | (lo & 0x0F));
  }
  return bad == 0;
}

// The bytes `hex` encodes, or nullopt when it is not hex (odd length, a non-hex digit).
// Never for secrets: the result is an ordinary std::string that nobody wipes.
inline std::optional<std::string> hex_decode(std::string_view hex) {
  std::string out(hex.size() / 2, '\0');
  if (!hex_decode(hex, out.data())) return std::nullopt;
  return out;
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_HEX_HPP
