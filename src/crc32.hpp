// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib's crc32() computes it),
// the base62 checksum characters of branded keys (KeyFormat::checksum), and the check
// of a checksummed key's body that KeyFormat and the Validator's format step make.
// Thread-safety: pure functions over constant tables.
#ifndef APIKEYS_SRC_CRC32_HPP
#define APIKEYS_SRC_CRC32_HPP

#include <cstddef>
#include <cstdint>
#include <string_view>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace apikeys::detail {

/// Continues a CRC-32 over `data`: crc32(crc32(0, a), b) == crc32(0, a + b).
std::uint32_t crc32(std::uint32_t crc, std::string_view data) noexcept;

/// True when `body` (what follows a checksummed key's prefix) is `length` base62
/// characters then the 6-character checksum of the prefix and those characters, where
/// prefix_crc is crc32(0, prefix). The whole body is read whatever it holds (no early
/// exit: the time does not depend on where it is wrong); carry-less multiplication
/// where the CPU has it, else the tables. REQUIRES: length >= 16, body[0..length+6).
bool checksummed_body_ok(const char* body, std::size_t length, std::uint32_t prefix_crc) noexcept;

#if defined(__SSE2__)
/// 16 characters at once: a byte is base62 when it is in '0'..'9' or, with bit 5 set
/// (ASCII upper to lower case; no other byte lands in 'a'..'z' that way), in 'a'..'z'.
/// Each range test is one add and one signed compare: adding 128 - lo maps lo..hi to
/// -128..-128 + (hi - lo) and every other byte, those >= 0x80 included, above it.
/// Returns a 16-bit mask, all ones if all 16 are base62.
inline int base62_mask16(const char* p) noexcept {
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i digit = _mm_cmplt_epi8(_mm_add_epi8(c, _mm_set1_epi8(static_cast<char>(128 - '0'))),
                                       _mm_set1_epi8(static_cast<char>(-128 + 10)));
  const __m128i lower = _mm_or_si128(c, _mm_set1_epi8(0x20));
  const __m128i alpha =
      _mm_cmplt_epi8(_mm_add_epi8(lower, _mm_set1_epi8(static_cast<char>(128 - 'a'))),
                     _mm_set1_epi8(static_cast<char>(-128 + 26)));
  return _mm_movemask_epi8(_mm_or_si128(digit, alpha));
}
#endif

/// Writes the 6 base62 characters ([0-9A-Za-z], most significant first, zero-padded)
/// of `crc` to out[0..6).
void encode_checksum(std::uint32_t crc, char* out) noexcept;

/// The value of 6 base62 characters, or a value above 0xFFFFFFFF when one is not
/// base62 or the number does not fit 32 bits (so it matches no CRC). No early exit.
std::uint64_t decode_checksum(const char* in) noexcept;

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_CRC32_HPP
