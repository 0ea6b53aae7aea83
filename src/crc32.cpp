#include "crc32.hpp"

#include <array>

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

constexpr std::array<std::int8_t, 256> make_digit_values() noexcept {
  std::array<std::int8_t, 256> v{};
  for (auto& x : v) x = -1;
  for (int i = 0; i < 62; ++i) v[static_cast<unsigned char>(kBase62[i])] = static_cast<std::int8_t>(i);
  return v;
}

constexpr std::array<std::int8_t, 256> kDigit = make_digit_values();

}  // namespace

std::uint32_t crc32(std::uint32_t crc, std::string_view data) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  crc = ~crc;
  while (n >= 8) {
    const std::uint32_t lo = crc ^ (static_cast<std::uint32_t>(p[0]) |
                                    static_cast<std::uint32_t>(p[1]) << 8 |
                                    static_cast<std::uint32_t>(p[2]) << 16 |
                                    static_cast<std::uint32_t>(p[3]) << 24);
    crc = kTable[7][lo & 0xFFU] ^ kTable[6][(lo >> 8) & 0xFFU] ^ kTable[5][(lo >> 16) & 0xFFU] ^
          kTable[4][lo >> 24] ^ kTable[3][p[4]] ^ kTable[2][p[5]] ^ kTable[1][p[6]] ^
          kTable[0][p[7]];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = kTable[0][(crc ^ *p++) & 0xFFU] ^ (crc >> 8);
  return ~crc;
}

void encode_checksum(std::uint32_t crc, char* out) noexcept {
  std::uint32_t v = crc;
  for (int i = 5; i >= 0; --i) {
    out[i] = kBase62[v % 62];
    v /= 62;
  }
}

std::uint64_t decode_checksum(const char* in) noexcept {
  std::uint64_t v = 0;
  bool ok = true;
  for (int i = 0; i < 6; ++i) {
    const int d = kDigit[static_cast<unsigned char>(in[i])];
    ok &= d >= 0;
    v = v * 62 + static_cast<std::uint64_t>(d < 0 ? 0 : d);
  }
  return ok ? v : ~std::uint64_t{0};
}

}  // namespace apikeys::detail
