// apikeys_ct_check: checks that the comparisons and MACs a validation applies to a
// secret, and to what is derived from it, take no branch and compute no address from
// its bytes, the way ctgrind does: run under Valgrind's memcheck, the secret's bytes
// (and the digests and proofs made from them) are marked undefined, so any conditional
// jump, conditional move or memory address that depends on them is reported as an
// error. Built at the optimisation the library ships with (scripts/bench.sh builds it
// in Release), since an optimiser may turn a branch-free loop into an early exit.
//
//   valgrind --error-exitcode=1 apikeys_ct_check   every check; 0 when clean
//   valgrind --error-exitcode=42 apikeys_ct_check --self-test
//       an early-exit compare on the same inputs: must be reported (exit 42)
//
// Outside Valgrind the marks do nothing and the program only runs the code once.
// What it checks, each on secrets marked undefined:
//   - apikeys::constant_time_equal() of two digests (the store path's compare);
//   - detail::same_proof() of two MemoryCache proofs (the cache hit's compare);
//   - detail::SipHasher::mac() of a secret (a MemoryCache proof, computed on every call);
//   - HmacSha256Hasher::hash() and verify() of a secret (the store path's digest).
// The lengths stay defined: a secret's length is its format's, public.
#include <valgrind/memcheck.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "apikeys/hasher.hpp"
#include "apikeys/types.hpp"
#include "memory_cache_probe.hpp"
#include "siphash.hpp"

namespace {

template <class T>
void undefined(T& value) {
  VALGRIND_MAKE_MEM_UNDEFINED(&value, sizeof value);
}
void undefined(std::string& s) { VALGRIND_MAKE_MEM_UNDEFINED(s.data(), s.size()); }
template <class T>
T defined(T value) {
  VALGRIND_MAKE_MEM_DEFINED(&value, sizeof value);
  return value;
}

apikeys::Digest digest_of(unsigned char fill) {
  apikeys::Digest d;
  d.bytes.fill(fill);
  d.pepper_id = 1;
  return d;
}

// What the self-test compares with: memcmp-like, stopping at the first difference.
bool early_exit_equal(const apikeys::Digest& a, const apikeys::Digest& b) {
  for (std::size_t i = 0; i < a.bytes.size(); ++i) {
    if (a.bytes[i] != b.bytes[i]) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const bool self_test = argc > 1 && std::strcmp(argv[1], "--self-test") == 0;
  unsigned long checks = 0;

  apikeys::Digest a = digest_of(0x5a);
  apikeys::Digest b = digest_of(0x5a);
  b.bytes[31] = 0x5b;  // differs in its last byte only
  undefined(a.bytes);
  undefined(b.bytes);
  if (self_test) {
    std::printf("self-test: %d\n", static_cast<int>(defined(early_exit_equal(a, b))));
    return 0;
  }

  checks += defined(apikeys::constant_time_equal(a, b)) ? 0 : 1;
  checks += defined(apikeys::constant_time_equal(a, a)) ? 1 : 0;

  apikeys::detail::CacheProof p{apikeys::detail::Sip128{0x0123456789abcdefULL, 42}};
  apikeys::detail::CacheProof q{apikeys::detail::Sip128{0x0123456789abcdefULL, 43}};
  undefined(p);
  undefined(q);
  checks += defined(apikeys::detail::same_proof(p, q)) ? 0 : 1;

  std::string secret = "sk_" + std::string(32, 'Q');
  undefined(secret);
  const apikeys::detail::SipHasher sip(0x1111, 0x2222);
  const apikeys::detail::Sip128 mac = sip.mac(secret);
  checks += defined(mac.lo) != 0 ? 1 : 0;

  const apikeys::HmacSha256Hasher hasher(std::string_view("k3Q9zX1mP7vL2wR8tY4uN6bC0dF5gH1j"));
  apikeys::Digest stored = hasher.hash(secret);
  undefined(stored.bytes);
  checks += defined(hasher.verify(secret, stored)) ? 1 : 0;

  std::printf("apikeys_ct_check: %lu checks ran\n", checks);
  return checks == 5 ? 0 : 2;
}
