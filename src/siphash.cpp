#include "siphash.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "apikeys/error.hpp"

namespace apikeys::detail {

SipHasher::SipHasher() {
  std::uint64_t k[2];
  if (RAND_bytes(reinterpret_cast<unsigned char*>(k), sizeof k) != 1) {
    throw Error(ErrorCode::crypto, "the CSPRNG failed to seed a hash table");
  }
  k0_ = k[0];
  k1_ = k[1];
  OPENSSL_cleanse(k, sizeof k);  // the key lives on in the object alone
}

}  // namespace apikeys::detail
