#include "crc32.hpp"

#include <array>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define APIKEYS_CRC32_CLMUL 1
#include <immintrin.h>
#endif

namespace apikeys::detail {

namespace {

constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

// Slicing-by-8 tables: kTable[0] is the classic byte table; kTable[k][b] is the CRC of
// byte b followed by k zero bytes, so 8 bytes are folded per step with 8 loads.
using Tables = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr Tables make_tables() noexcept {
  Tables t{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int k = 0; k < 8; ++k) c = (c & 1U) != 0 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
    t[0][b] = c;
  }
  for (std::size_t k = 1; k < 8; ++k) {
    for (std::uint32_t b = 0; b < 256; ++b) {
      t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFU];
    }
  }
  return t;
}

constexpr Tables kTable = make_tables();

// The value of each base62 character; kNotDigit for every other byte. kNotDigit is so
// large that any number it enters is above 0xFFFFFFFF, yet six of it, each weighted up
// to 62^5, still fit 64 bits (2^33 * (62^6 - 1) / 61 < 2^63): no overflow can wrap a
// bad character back into range.
constexpr std::uint64_t kNotDigit = std::uint64_t{1} << 33;

constexpr std::array<std::uint64_t, 256> make_digit_values() noexcept {
  std::array<std::uint64_t, 256> v{};
  for (auto& x : v) x = kNotDigit;
  for (std::uint64_t i = 0; i < 62; ++i) v[static_cast<unsigned char>(kBase62[i])] = i;
  return v;
}

constexpr std::array<std::uint64_t, 256> kDigit = make_digit_values();

// One slicing-by-8 step: the CRC register `c` (inverted) over p[0..8).
inline std::uint32_t step8(std::uint32_t c, const unsigned char* p) noexcept {
  const std::uint32_t lo =
      c ^ (static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
           static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24);
  return kTable[7][lo & 0xFFU] ^ kTable[6][(lo >> 8) & 0xFFU] ^ kTable[5][(lo >> 16) & 0xFFU] ^
         kTable[4][lo >> 24] ^ kTable[3][p[4]] ^ kTable[2][p[5]] ^ kTable[1][p[6]] ^
         kTable[0][p[7]];
}

inline std::uint32_t step1(std::uint32_t c, unsigned char b) noexcept {
  return kTable[0][(c ^ b) & 0xFFU] ^ (c >> 8);
}

// 1 when p[0..n) are all base62, else 0; no early exit.
inline unsigned base62_run(const char* p, std::size_t n) noexcept {
  unsigned ok = 1;
  std::size_t i = 0;
#if defined(__SSE2__)
  for (; i + 16 <= n; i += 16) ok &= static_cast<unsigned>(base62_mask16(p + i) == 0xFFFF);
#endif
  for (; i < n; ++i) ok &= static_cast<unsigned>(kDigit[static_cast<unsigned char>(p[i])] < 62);
  return ok;
}

// The six digits weighted by powers of 62 and summed, with no test per character (a bad
// one makes the value too large to match; see kNotDigit). The same sum as Horner's rule,
// exactly (no term or partial sum wraps), but the products are independent: about a
// third of the latency of the chain of five multiply-adds.
inline std::uint64_t decode(const char* in) noexcept {
  const auto* u = reinterpret_cast<const unsigned char*>(in);
  constexpr std::uint64_t k62p2 = std::uint64_t{62} * 62;
  constexpr std::uint64_t k62p3 = k62p2 * 62;
  constexpr std::uint64_t k62p4 = k62p3 * 62;
  constexpr std::uint64_t k62p5 = k62p4 * 62;
  return (kDigit[u[0]] * k62p5 + kDigit[u[1]] * k62p4) +
         (kDigit[u[2]] * k62p3 + kDigit[u[3]] * k62p2) + (kDigit[u[4]] * 62 + kDigit[u[5]]);
}

bool body_ok_tables(const char* body, std::size_t length, std::uint32_t prefix_crc) noexcept {
  const std::uint32_t crc = crc32(prefix_crc, std::string_view(body, length));
  return (base62_run(body, length) & static_cast<unsigned>(decode(body + length) == crc)) != 0;
}

#if defined(APIKEYS_CRC32_CLMUL)
// Carry-less multiplication (PCLMULQDQ): fold 16 bytes at a time, then reduce 128 bits
// to the 32-bit CRC (Barrett), as in Intel's "Fast CRC Computation for Generic
// Polynomials Using PCLMULQDQ". The constants are powers of x modulo the CRC-32
// polynomial P, bit-reflected as the CRC is (and shifted by one bit for the reflected
// product); tests/unit/key_format_test.cpp checks the result against the tables and zlib.
constexpr long long kFold128Lo = 0x1751997d0;  // x^(128+32) mod P
constexpr long long kFold128Hi = 0x0ccaa009e;  // x^(128-32) mod P
constexpr long long kPoly = 0x1db710641;       // P
// floor(x^96 / P): 65 bits, but its x^0 coefficient is 0, so its reflection fits 64.
constexpr long long kMu96 = static_cast<long long>(0xb4e5b025f7011641ULL);

__attribute__((target("pclmul"))) inline __m128i clmul_fold(__m128i x, __m128i k,
                                                            const unsigned char* next) noexcept {
  return _mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(next)));
}

// A remainder `r` of 96 bits reduced to the (inverted) CRC register by Barrett's method
// in one step: the quotient's 64 bits are r's high-order 64 bits times kMu96 (the
// product's low half, in the reflected order; the next multiplication reads no more),
// and r minus the quotient times P leaves the register in bits 64..95. Two dependent
// multiplications, where folding to 64 bits first and then reducing took three.
__attribute__((target("pclmul"))) inline std::uint32_t clmul_reduce96(__m128i r) noexcept {
  const __m128i barrett = _mm_set_epi64x(kPoly, kMu96);
  const __m128i quotient = _mm_clmulepi64_si128(r, barrett, 0x00);
  const __m128i rest = _mm_xor_si128(r, _mm_clmulepi64_si128(quotient, barrett, 0x10));
  return static_cast<std::uint32_t>(_mm_cvtsi128_si32(_mm_srli_si128(rest, 8)));
}

// The 128-bit remainder `x` reduced to the (inverted) CRC register: its high-order 64
// bits folded into the rest (96 bits), then clmul_reduce96().
__attribute__((target("pclmul"))) inline std::uint32_t clmul_reduce(__m128i x) noexcept {
  const __m128i fold128 = _mm_set_epi64x(kFold128Hi, kFold128Lo);
  return clmul_reduce96(
      _mm_xor_si128(_mm_clmulepi64_si128(x, fold128, 0x10), _mm_srli_si128(x, 8)));
}

// Any length of at least 16 (body_ok_clmul32() takes 32).
__attribute__((target("pclmul"))) bool body_ok_clmul(const char* body, std::size_t length,
                                                     std::uint32_t prefix_crc) noexcept {
  const auto* a = reinterpret_cast<const unsigned char*>(body);
  std::uint32_t reg = ~prefix_crc;
  // The bytes beyond a multiple of 16 first, by table; then the rest by folding.
  const std::size_t head = length % 16;
  for (std::size_t i = 0; i < head; ++i) reg = step1(reg, a[i]);
  const __m128i fold128 = _mm_set_epi64x(kFold128Hi, kFold128Lo);
  __m128i x = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + head)),
                            _mm_cvtsi32_si128(static_cast<int>(reg)));
  for (std::size_t i = head + 16; i < length; i += 16) x = clmul_fold(x, fold128, a + i);
  const std::uint32_t crc = ~clmul_reduce(x);
  return (base62_run(body, length) & static_cast<unsigned>(decode(body + length) == crc)) != 0;
}

// The 32-character body (the branded format's, and the default length) without the
// fold chain: the CRC is linear in the message, so each 8-byte word w_j (j = 0..3, the
// register already in w_0) contributes w_j * x^(224 - 64j) mod P on its own. Three
// independent products of a word by a 33-bit constant and the last word as it is,
// XORed, leave 96 bits for clmul_reduce96(): three dependent multiplications in all,
// where folding 16 bytes then reducing 128 bits takes four. The latency of this check
// is what a wrong checksum costs over a wrong character. tests/unit/key_format_test.cpp
// checks it against the tables for many prefixes.
constexpr long long kWord0 = 0x15a546366;  // x^224 mod P (words 1 and 2: kFold128Lo, Hi)

__attribute__((target("pclmul"))) bool body_ok_clmul32(const char* body,
                                                       std::uint32_t prefix_crc) noexcept {
  const auto* a = reinterpret_cast<const unsigned char*>(body);
  const __m128i lo = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)),
                                   _mm_cvtsi32_si128(static_cast<int>(~prefix_crc)));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16));
  const __m128i k01 = _mm_set_epi64x(kFold128Lo, kWord0);
  const __m128i k2 = _mm_set_epi64x(0, kFold128Hi);
  const std::uint32_t crc = ~clmul_reduce96(_mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(lo, k01, 0x00), _mm_clmulepi64_si128(lo, k01, 0x11)),
      _mm_xor_si128(_mm_clmulepi64_si128(hi, k2, 0x00), _mm_srli_si128(hi, 8))));
  return (base62_run(body, 32) & static_cast<unsigned>(decode(body + 32) == crc)) != 0;
}

bool detect_clmul() noexcept {
  __builtin_cpu_init();
  return __builtin_cpu_supports("pclmul") != 0;
}
// Zero-initialised (false: the tables) until the dynamic initialisation has run.
const bool kHasClmul = detect_clmul();
#endif

}  // namespace

std::uint32_t crc32(std::uint32_t crc, std::string_view data) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  crc = ~crc;
  for (; n >= 8; n -= 8, p += 8) crc = step8(crc, p);
  while (n-- > 0) crc = step1(crc, *p++);
  return ~crc;
}

bool checksummed_body_ok(const char* body, std::size_t length, std::uint32_t prefix_crc) noexcept {
#if defined(APIKEYS_CRC32_CLMUL)
  if (kHasClmul && length == 32) return body_ok_clmul32(body, prefix_crc);
  if (kHasClmul && length >= 16) return body_ok_clmul(body, length, prefix_crc);
#endif
  return body_ok_tables(body, length, prefix_crc);
}

void encode_checksum(std::uint32_t crc, char* out) noexcept {
  std::uint32_t v = crc;
  for (int i = 5; i >= 0; --i) {
    out[i] = kBase62[v % 62];
    v /= 62;
  }
}

std::uint64_t decode_checksum(const char* in) noexcept { return decode(in); }

}  // namespace apikeys::detail
