// APIKEYS_EXPORT marks the library's public classes and functions.
// Thread-safety and ownership: not applicable (preprocessor only).
// The shared library is built with hidden visibility, so only what carries this
// macro is exported; a static build (APIKEYS_STATIC_DEFINE) makes it empty.
#ifndef APIKEYS_EXPORT_HPP
#define APIKEYS_EXPORT_HPP

#if defined(APIKEYS_STATIC_DEFINE)
#define APIKEYS_EXPORT
#elif defined(_WIN32)
#if defined(APIKEYS_BUILDING)
#define APIKEYS_EXPORT __declspec(dllexport)
#else
#define APIKEYS_EXPORT __declspec(dllimport)
#endif
#else
#define APIKEYS_EXPORT __attribute__((visibility("default")))
#endif

#endif  // APIKEYS_EXPORT_HPP
