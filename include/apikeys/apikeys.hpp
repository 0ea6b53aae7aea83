// Umbrella header: everything a host application needs from apikeys.
// Thread-safety and ownership: see each component's header.
#ifndef APIKEYS_APIKEYS_HPP
#define APIKEYS_APIKEYS_HPP

#include "apikeys/cache.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/error.hpp"
#include "apikeys/export.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/import.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_limiter.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/scan.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/stats.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validation_code.hpp"
#include "apikeys/validator.hpp"
#include "apikeys/version.hpp"

#endif  // APIKEYS_APIKEYS_HPP
