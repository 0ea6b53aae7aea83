// Private: SipHash (Aumasson and Bernstein), a keyed hash with a 64-bit or a 128-bit
// tag, and SipHasher, under a per-instance random key: its 1-3 variant for hash tables
// whose keys an attacker chooses (public keys presented to validate), its 2-4 variant
// as a MAC (what MemoryCache keeps of the secret that earned a verdict). std::hash is
// unkeyed, so a flood of colliding keys could turn a table into a list; a secret key
// prevents that.
// Thread-safety: siphash() is a pure function; a SipHasher is immutable once built, so
// one instance may hash from many threads at once. Ownership: plain values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace apikeys::detail {

namespace sip {

inline std::uint64_t rotl(std::uint64_t x, int b) noexcept { return (x << b) | (x >> (64 - b)); }

// The state, a local value: a string's bytes are read through a char pointer, which may
// alias anything the compiler cannot prove apart, so a state in the caller's memory was
// stored and reloaded around every load of the message (SipHash-2-4 of a 35-byte
// secret: 403 instructions, 375 with the state local).
struct State {
  std::uint64_t v0;
  std::uint64_t v1;
  std::uint64_t v2;
  std::uint64_t v3;
};

inline void round(State& s) noexcept {
  s.v0 += s.v1;
  s.v1 = rotl(s.v1, 13);
  s.v1 ^= s.v0;
  s.v0 = rotl(s.v0, 32);
  s.v2 += s.v3;
  s.v3 = rotl(s.v3, 16);
  s.v3 ^= s.v2;
  s.v0 += s.v3;
  s.v3 = rotl(s.v3, 21);
  s.v3 ^= s.v0;
  s.v2 += s.v1;
  s.v1 = rotl(s.v1, 17);
  s.v1 ^= s.v2;
  s.v2 = rotl(s.v2, 32);
}

// Eight bytes as a little-endian word on every host: one load on little-endian ones.
inline std::uint64_t load_le64(const unsigned char* p) noexcept {
  std::uint64_t m = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (int i = 7; i >= 0; --i) m = (m << 8) | p[i];
#else
  std::memcpy(&m, p, sizeof m);
#endif
  return m;
}

// The state after SipHash-C-D's compression of `data` (its length block included),
// from v1 set up for a 64-bit tag or, with `wide`, a 128-bit one.
template <int C>
inline State absorb(std::uint64_t k0, std::uint64_t k1, std::string_view data, bool wide) noexcept {
  State s{0x736f6d6570736575ULL ^ k0, 0x646f72616e646f6dULL ^ k1 ^ (wide ? 0xee : 0),
          0x6c7967656e657261ULL ^ k0, 0x7465646279746573ULL ^ k1};
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const std::size_t n = data.size();
  const std::size_t end = n - (n % 8);
  for (std::size_t i = 0; i < end; i += 8) {
    const std::uint64_t m = load_le64(p + i);
    s.v3 ^= m;
    for (int r = 0; r < C; ++r) round(s);
    s.v0 ^= m;
  }
  std::uint64_t b = static_cast<std::uint64_t>(n) << 56;
  const std::size_t left = n % 8;
  if (left != 0 && n >= 8) {
    // The last eight bytes in one load, those already absorbed shifted out: a key or a
    // secret (over 8 bytes) takes no byte loop.
    b |= load_le64(p + n - 8) >> (8 * (8 - left));
  } else {
    for (std::size_t i = 0; i < left; ++i) b |= static_cast<std::uint64_t>(p[end + i]) << (8 * i);
  }
  s.v3 ^= b;
  for (int r = 0; r < C; ++r) round(s);
  s.v0 ^= b;
  return s;
}

}  // namespace sip

// SipHash-C-D of `data` under the key whose 16 bytes, read as two little-endian words,
// are k0 and k1. siphash<2, 4> is the reference SipHash-2-4; siphash<1, 3> the faster
// variant hash tables use (Python, Rust).
template <int C, int D>
inline std::uint64_t siphash(std::uint64_t k0, std::uint64_t k1, std::string_view data) noexcept {
  sip::State s = sip::absorb<C>(k0, k1, data, false);
  s.v2 ^= 0xff;
  for (int r = 0; r < D; ++r) sip::round(s);
  return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

// A 128-bit tag: `lo` is its first eight bytes read as a little-endian word, `hi` the
// last eight.
struct Sip128 {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  friend bool operator==(const Sip128& a, const Sip128& b) noexcept {
    return a.lo == b.lo && a.hi == b.hi;
  }
};

// SipHash-C-D with its 128-bit tag (the reference implementation's outlen 16): D more
// rounds than the 64-bit tag for the second word.
template <int C, int D>
inline Sip128 siphash128(std::uint64_t k0, std::uint64_t k1, std::string_view data) noexcept {
  sip::State s = sip::absorb<C>(k0, k1, data, true);
  s.v2 ^= 0xee;
  for (int r = 0; r < D; ++r) sip::round(s);
  Sip128 tag;
  tag.lo = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
  s.v1 ^= 0xdd;
  for (int r = 0; r < D; ++r) sip::round(s);
  tag.hi = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
  return tag;
}

// SipHash-1-3 under a key of its own.
class SipHasher {
 public:
  // Draws the key from the CSPRNG; throws Error(crypto) if that fails.
  SipHasher();
  // A fixed key (tests, reproducible tables): never for tables an attacker can fill.
  SipHasher(std::uint64_t k0, std::uint64_t k1) noexcept : k0_(k0), k1_(k1) {}

  std::uint64_t operator()(std::string_view data) const noexcept {
    return siphash<1, 3>(k0_, k1_, data);
  }
  // The 128-bit tag, for tables that identify a key by its hash alone.
  [[nodiscard]] Sip128 wide(std::string_view data) const noexcept {
    return siphash128<1, 3>(k0_, k1_, data);
  }
  // SipHash-2-4's 128-bit tag (the reference rounds: a MAC, not a table's hash). Its
  // state is a local value (sip::State), not wiped.
  [[nodiscard]] Sip128 mac(std::string_view data) const noexcept {
    return siphash128<2, 4>(k0_, k1_, data);
  }

 private:
  std::uint64_t k0_ = 0;
  std::uint64_t k1_ = 0;
};

}  // namespace apikeys::detail
