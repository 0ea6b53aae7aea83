#include "apikeys/types.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <new>

#include "apikeys/error.hpp"

namespace apikeys {

namespace {
// Hex digit values, 0xFF for anything else: one load per character instead of three
// range checks (Uuid::parse runs twice per record a SqliteStore reads).
constexpr std::array<std::uint8_t, 256> make_hex_table() noexcept {
  std::array<std::uint8_t, 256> t{};
  for (auto& v : t) v = 0xFF;
  for (std::size_t c = 0; c < 10; ++c) t['0' + c] = static_cast<std::uint8_t>(c);
  for (std::size_t c = 0; c < 6; ++c) {
    t['a' + c] = static_cast<std::uint8_t>(10 + c);
    t['A' + c] = static_cast<std::uint8_t>(10 + c);
  }
  return t;
}
constexpr std::array<std::uint8_t, 256> kHexTable = make_hex_table();
// Offsets of the 16 byte pairs in "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
constexpr std::size_t kUuidPairs[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
constexpr char kHexDigits[] = "0123456789abcdef";
}  // namespace

std::optional<Uuid> Uuid::parse(std::string_view text) noexcept {
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
      text[23] != '-') {
    return std::nullopt;
  }
  std::array<std::uint8_t, 16> bytes{};
  unsigned bad = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    const std::uint8_t hi = kHexTable[static_cast<unsigned char>(text[kUuidPairs[i]])];
    const std::uint8_t lo = kHexTable[static_cast<unsigned char>(text[kUuidPairs[i] + 1])];
    bad |= static_cast<unsigned>(hi | lo) & 0xF0u;
    bytes[i] = static_cast<std::uint8_t>((hi << 4) | (lo & 0x0F));
  }
  if (bad != 0) return std::nullopt;
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
  std::string s;
  s.reserve(36);
  for (std::size_t i = 0; i < bytes_.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHexDigits[bytes_[i] >> 4]);
    s.push_back(kHexDigits[bytes_[i] & 0x0F]);
  }
  return s;
}

bool Uuid::is_nil() const noexcept {
  for (auto b : bytes_) {
    if (b != 0) return false;
  }
  return true;
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
  }
  return "unknown";
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
  const int n = std::snprintf(buf, sizeof buf, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ",
                              static_cast<long long>(y), static_cast<long long>(m),
                              static_cast<long long>(d), static_cast<long long>(rem / 3'600'000),
                              static_cast<long long>(rem / 60'000 % 60),
                              static_cast<long long>(rem / 1000 % 60),
                              static_cast<long long>(rem % 1000));
  return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
}

}  // namespace apikeys
