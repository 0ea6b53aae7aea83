// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib's crc32() computes it),
// for the checksum of branded keys (KeyFormat::checksum).
// Thread-safety: pure functions over constant tables.
#ifndef APIKEYS_SRC_CRC32_HPP
#define APIKEYS_SRC_CRC32_HPP

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace apikeys::detail {

/// Continues a CRC-32 over `data`: crc32(crc32(0, a), b) == crc32(0, a + b).
std::uint32_t crc32(std::uint32_t crc, std::string_view data) noexcept;

/// Writes the 6 base62 characters ([0-9A-Za-z], most significant first, zero-padded)
/// of `crc` to out[0..6).
void encode_checksum(std::uint32_t crc, char* out) noexcept;

/// The value of 6 base62 characters, or a value above 0xFFFFFFFF when one is not
/// base62 or the number does not fit 32 bits (so it matches no CRC).
std::uint64_t decode_checksum(const char* in) noexcept;

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_CRC32_HPP
