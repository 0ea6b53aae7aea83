#include "apikeys/types.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <new>

#include "apikeys/error.hpp"
#include "hex.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace apikeys {

namespace {
// The five groups of "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx": offset in the text, first
// byte, number of bytes.
struct UuidGroup {
  std::size_t text;
  std::size_t byte;
  std::size_t bytes;
};
constexpr UuidGroup kUuidGroups[5] = {{0, 0, 4}, {9, 4, 2}, {14, 6, 2}, {19, 8, 2}, {24, 10, 6}};

#if defined(__SSE2__)
// Sixteen hex digits at `p` decoded into eight bytes at `out`, sixteen at a time: about
// 25 instructions where a table lookup per digit took about 130 per id (SqliteStore
// parses two to five ids per find()). False when one is not a hex digit ('0'-'9', 'a'-'f'
// or 'A'-'F'). Not for secrets: hex.hpp's decoder is (ids are not secret).
inline bool decode_hex16(const char* p, std::uint8_t* out) noexcept {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  // x <= n, unsigned, as min(x, n) == x: SSE2 compares bytes as signed only.
  const __m128i d = _mm_sub_epi8(v, _mm_set1_epi8('0'));
  const __m128i is_digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
  // Only 'A'-'F' and 'a'-'f' land in 'a'-'f' with the 0x20 bit set.
  const __m128i l = _mm_sub_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
  const __m128i is_letter = _mm_cmpeq_epi8(_mm_min_epu8(l, _mm_set1_epi8(5)), l);
  if (_mm_movemask_epi8(_mm_or_si128(is_digit, is_letter)) != 0xFFFF) return false;
  const __m128i nibbles = _mm_or_si128(
      _mm_and_si128(is_digit, d), _mm_and_si128(is_letter, _mm_add_epi8(l, _mm_set1_epi8(10))));
  // Each 16-bit lane holds a digit pair, the first (high nibble) in its low byte.
  const __m128i hi = _mm_and_si128(_mm_slli_epi16(nibbles, 4), _mm_set1_epi16(0x00F0));
  const __m128i bytes = _mm_or_si128(hi, _mm_srli_epi16(nibbles, 8));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(bytes, bytes));
  return true;
}
#else
// Hex digit values for Uuid::parse(), 0xFF for anything else. Not for secrets: hex.hpp's
// arithmetic decoder is, whose digits must not pick a cache line. Ids are not secret.
constexpr std::array<std::uint8_t, 256> kHexValues = [] {
  std::array<std::uint8_t, 256> t{};
  for (std::uint8_t& v : t) v = 0xFF;
  for (std::size_t c = 0; c < 10; ++c) t['0' + c] = static_cast<std::uint8_t>(c);
  for (std::size_t c = 0; c < 6; ++c) {
    t['a' + c] = static_cast<std::uint8_t>(10 + c);
    t['A' + c] = static_cast<std::uint8_t>(10 + c);
  }
  return t;
}();

inline bool decode_hex16(const char* p, std::uint8_t* out) noexcept {
  // Every digit decoded; a non-digit's 0xFF sets a high bit of `seen`, which a digit's
  // value (0-15) never does.
  unsigned seen = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    const unsigned hi = kHexValues[static_cast<unsigned char>(p[2 * i])];
    const unsigned lo = kHexValues[static_cast<unsigned char>(p[2 * i + 1])];
    seen |= hi | lo;
    out[i] = static_cast<std::uint8_t>((hi << 4) | (lo & 0x0F));
  }
  return (seen & 0xF0) == 0;
}
#endif
}  // namespace

std::optional<Uuid> Uuid::parse(std::string_view text) noexcept {
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
      text[23] != '-') {
    return std::nullopt;
  }
  // The 32 digits side by side, then decoded 16 at a time.
  // Constant sizes (kUuidGroups), so each copy is a load and a store.
  const char* t = text.data();
  char digits[32];
  std::memcpy(digits, t, 8);
  std::memcpy(digits + 8, t + 9, 4);
  std::memcpy(digits + 12, t + 14, 4);
  std::memcpy(digits + 16, t + 19, 4);
  std::memcpy(digits + 20, t + 24, 12);
  std::array<std::uint8_t, 16> bytes{};
  if (!decode_hex16(digits, bytes.data()) || !decode_hex16(digits + 16, bytes.data() + 8)) {
    return std::nullopt;
  }
  return Uuid(bytes);
}

Uuid Uuid::random() {
  std::array<std::uint8_t, 16> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw Error(ErrorCode::crypto, "the CSPRNG failed to produce a key id");
  }
  bytes[6] = static_cast<std::uint8_t>((bytes[6] & 0x0F) | 0x40);  // version 4
  bytes[8] = static_cast<std::uint8_t>((bytes[8] & 0x3F) | 0x80);  // RFC 4122 variant
  return Uuid(bytes);
}

std::string Uuid::to_string() const {
  std::string s(36, '-');
  for (const UuidGroup& g : kUuidGroups) {
    detail::hex_encode(bytes_.data() + g.byte, g.bytes, s.data() + g.text);
  }
  return s;
}

// Two 8-byte loads: the byte loop took about 45 instructions, on the hit path twice.
bool Uuid::is_nil() const noexcept {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  std::memcpy(&lo, bytes_.data(), 8);
  std::memcpy(&hi, bytes_.data() + 8, 8);
  return (lo | hi) == 0;
}

bool constant_time_equal(const Digest& a, const Digest& b) noexcept {
  // Four 64-bit words XORed and ORed together: no branch and no early exit on the data,
  // like CRYPTO_memcmp (a byte loop, 7x the instructions; it runs on every validate).
  static_assert(sizeof(a.bytes) % 8 == 0, "digest is whole words");
  std::uint64_t diff = 0;
  for (std::size_t i = 0; i < a.bytes.size(); i += 8) {
    std::uint64_t x;
    std::uint64_t y;
    std::memcpy(&x, a.bytes.data() + i, 8);
    std::memcpy(&y, b.bytes.data() + i, 8);
    diff |= x ^ y;
#if defined(__GNUC__) || defined(__clang__)
    // Opaque to the optimiser: it cannot turn the loop into an early exit on `diff`.
    __asm__ __volatile__("" : "+r"(diff));
#endif
  }
  const bool same_bytes = diff == 0;
  // Bitwise & (not &&) so the pepper comparison never short-circuits the byte one.
  return static_cast<bool>(static_cast<unsigned>(same_bytes) &
                           static_cast<unsigned>(a.pepper_id == b.pepper_id));
}

const char* to_string(KeyStatus status) noexcept {
  switch (status) {
    case KeyStatus::active: return "active";
    case KeyStatus::revoked: return "revoked";
    case KeyStatus::disabled: return "disabled";
  }
  return "unknown";
}

std::optional<KeyStatus> parse_key_status(std::string_view name) noexcept {
  for (const KeyStatus s : {KeyStatus::active, KeyStatus::revoked, KeyStatus::disabled}) {
    if (name == to_string(s)) return s;
  }
  return std::nullopt;
}

SecretString::SecretString(std::string_view bytes) {
  if (bytes.empty()) return;
  data_ = new char[bytes.size()];
  std::memcpy(data_, bytes.data(), bytes.size());
  size_ = bytes.size();
}

SecretString::SecretString(SecretString&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

SecretString& SecretString::operator=(SecretString&& other) noexcept {
  if (this != &other) {
    wipe();
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

SecretString::~SecretString() { wipe(); }

void SecretString::wipe() noexcept {
  if (data_ != nullptr) {
    OPENSSL_cleanse(data_, size_);
    delete[] data_;
  }
  data_ = nullptr;
  size_ = 0;
}

std::string format_utc(TimePoint t) {
  // Howard Hinnant's civil_from_days: exact for the whole proleptic Gregorian range.
  const std::int64_t ms = to_unix_millis(t);
  std::int64_t days = ms / 86'400'000;
  std::int64_t rem = ms % 86'400'000;
  if (rem < 0) {
    rem += 86'400'000;
    --days;
  }
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);

  char buf[40];
  const int n = std::snprintf(
      buf, sizeof buf, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ",
      static_cast<long long>(y), static_cast<long long>(m), static_cast<long long>(d),
      static_cast<long long>(rem / 3'600'000), static_cast<long long>(rem / 60'000 % 60),
      static_cast<long long>(rem / 1000 % 60), static_cast<long long>(rem % 1000));
  return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
}

}  // namespace apikeys
