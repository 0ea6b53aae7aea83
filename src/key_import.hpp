// Private: the body of KeyManager::import_keys(), kept out of key_manager.cpp. See
// include/apikeys/import.hpp and KeyManager::import_keys() for the contract.
// Thread-safety: as KeyManager (the store and hasher are thread-safe; `in` is the
// caller's). Ownership: borrows everything for the call.
#ifndef APIKEYS_SRC_KEY_IMPORT_HPP
#define APIKEYS_SRC_KEY_IMPORT_HPP

#include <functional>
#include <istream>

#include "apikeys/hasher.hpp"
#include "apikeys/import.hpp"
#include "apikeys/store.hpp"
#include "apikeys/validator.hpp"

namespace apikeys::detail {

// Reads `in` to its end and imports its rows into `store`; `validation` gives the key
// formats accepted (one must take legacy keys) and the clock. Inserts each key with
// Store::insert_audited() and `audit`. Calls `imported` (when not empty) once per key
// inserted, after the insert, with the key's fields (never its digest); it must not
// throw.
ImportReport import_keys(Store& store, const Hasher& hasher, const ValidatorOptions& validation,
                         std::istream& in, const ImportOptions& options, const ChangeAudit& audit,
                         const std::function<void(const KeyInfo&)>& imported);

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_KEY_IMPORT_HPP
