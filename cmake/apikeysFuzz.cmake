# libFuzzer targets: fuzz_token, fuzz_validate, fuzz_request, fuzz_cli, fuzz_scan,
# fuzz_scope, fuzz_metadata, fuzz_import, fuzz_rate_limit and fuzz_admission, sources in
# tests/fuzz/, seed corpora in tests/fuzz/corpus/<target>/. scripts/ci-fuzz.sh builds
# and runs them. Off by default; needs clang and its libFuzzer runtime (Debian: clang-14
# libclang-rt-14-dev). Configure a separate build directory:
#   CC=clang CXX=clang++ cmake -B build-fuzz -DAPIKEYS_BUILD_FUZZERS=ON -DAPIKEYS_BUILD_TESTS=OFF
# The whole library is instrumented (coverage and ASan+UBSan), so do not mix this
# build with one whose tests should run uninstrumented.
option(APIKEYS_BUILD_FUZZERS "Build the libFuzzer targets (clang only)" OFF)
if(NOT APIKEYS_BUILD_FUZZERS)
  return()
endif()

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "APIKEYS_BUILD_FUZZERS needs clang (libFuzzer); configure with "
                      "CXX=clang++ (this is ${CMAKE_CXX_COMPILER_ID})")
endif()

# Any UBSan finding aborts, so the fuzzer sees it as a crash rather than a log line.
set(apikeys_fuzz_sanitizers -fsanitize=address,undefined -fno-sanitize-recover=all
                            -fno-omit-frame-pointer)

# The library: coverage feedback and sanitizers, but not libFuzzer's main().
target_compile_options(apikeys PRIVATE -fsanitize=fuzzer-no-link ${apikeys_fuzz_sanitizers})
target_link_options(apikeys PUBLIC ${apikeys_fuzz_sanitizers})

# fuzz_cli links the CLI's own code, apikeys_cli_lib from tools/ (added here for the
# library alone when the tool itself is not built), instrumented like the library.
if(NOT TARGET apikeys_cli_lib)
  add_subdirectory(${PROJECT_SOURCE_DIR}/tools ${PROJECT_BINARY_DIR}/tools)
endif()
target_compile_options(apikeys_cli_lib PRIVATE -fsanitize=fuzzer-no-link ${apikeys_fuzz_sanitizers})

function(apikeys_add_fuzzer name)
  add_executable(${name} ${PROJECT_SOURCE_DIR}/tests/fuzz/${name}.cpp)
  target_compile_options(${name} PRIVATE -fsanitize=fuzzer ${apikeys_fuzz_sanitizers})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer ${apikeys_fuzz_sanitizers})
  target_link_libraries(${name} PRIVATE apikeys::apikeys ${ARGN})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/fuzz)
  apikeys_set_warnings(${name})
endfunction()

apikeys_add_fuzzer(fuzz_token)
apikeys_add_fuzzer(fuzz_validate)
apikeys_add_fuzzer(fuzz_request)
apikeys_add_fuzzer(fuzz_scan)
apikeys_add_fuzzer(fuzz_import)
apikeys_add_fuzzer(fuzz_cli apikeys_cli_lib)
apikeys_add_fuzzer(fuzz_rate_limit)
# fuzz_admission checks MemoryLimiter against the model the unit tests use.
apikeys_add_fuzzer(fuzz_admission)
target_include_directories(fuzz_admission PRIVATE ${PROJECT_SOURCE_DIR}/tests/support)

# fuzz_scope and fuzz_metadata call the scope and metadata checks in src/ directly; a
# shared library hides them, so such a build compiles the fuzzers their own copy.
foreach(name fuzz_scope fuzz_metadata)
  apikeys_add_fuzzer(${name})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  if(BUILD_SHARED_LIBS)
    target_sources(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src/scope.cpp
      ${PROJECT_SOURCE_DIR}/src/metadata.cpp ${PROJECT_SOURCE_DIR}/src/text.cpp)
    target_link_libraries(${name} PRIVATE nlohmann_json::nlohmann_json)
  endif()
endforeach()
