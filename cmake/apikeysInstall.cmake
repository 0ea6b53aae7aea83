# Install rules: the library, its headers, the exported targets, the CMake package
# (apikeysConfig.cmake + version file) and the pkg-config file.
# Included by the top-level CMakeLists.txt when APIKEYS_INSTALL is on.
include(CMakePackageConfigHelpers)

# Where apikeysConfig.cmake goes, relative to the prefix. The vcpkg port sets
# share/apikeys, the layout vcpkg expects.
set(APIKEYS_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/apikeys" CACHE STRING
    "Where apikeysConfig.cmake is installed, relative to the prefix")

# The include directory comes from the target's INSTALL_INTERFACE; no INCLUDES
# DESTINATION here, or consumers would see it twice.
install(TARGETS apikeys
  EXPORT apikeysTargets
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
# A backend's header is installed only with its backend: without the class behind it,
# including it would only move the error from compile time to link time.
set(_apikeys_header_excludes)
if(NOT APIKEYS_WITH_POSTGRES)
  list(APPEND _apikeys_header_excludes PATTERN "postgres_store.hpp" EXCLUDE)
endif()
if(NOT APIKEYS_WITH_REDIS)
  list(APPEND _apikeys_header_excludes PATTERN "redis_cache.hpp" EXCLUDE
    PATTERN "redis_limiter.hpp" EXCLUDE)
endif()
install(DIRECTORY include/apikeys DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp" ${_apikeys_header_excludes})
install(FILES "${PROJECT_BINARY_DIR}/include/apikeys/version.hpp"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/apikeys)

install(EXPORT apikeysTargets NAMESPACE apikeys:: DESTINATION ${APIKEYS_CMAKE_DIR})
# The build tree is a package too: find_package(apikeys) with apikeys_DIR=<build dir>.
export(EXPORT apikeysTargets NAMESPACE apikeys::
  FILE "${PROJECT_BINARY_DIR}/apikeysTargets.cmake")

configure_package_config_file(cmake/apikeysConfig.cmake.in
  "${PROJECT_BINARY_DIR}/apikeysConfig.cmake"
  INSTALL_DESTINATION ${APIKEYS_CMAKE_DIR})
# 0.x: a new minor version may break the API, so only x.y.* satisfies find_package(apikeys x.y).
write_basic_package_version_file("${PROJECT_BINARY_DIR}/apikeysConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/apikeysConfig.cmake"
              "${PROJECT_BINARY_DIR}/apikeysConfigVersion.cmake"
  DESTINATION ${APIKEYS_CMAKE_DIR})

# pkg-config. Install dirs may be relative (to the prefix) or absolute.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(APIKEYS_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  set(APIKEYS_PC_LIBDIR "\${exec_prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(APIKEYS_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(APIKEYS_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
# A shared libapikeys records its own dependencies (DT_NEEDED); a static one leaves
# them to the final link, so only the static .pc lists them.
if(BUILD_SHARED_LIBS)
  set(APIKEYS_PC_CFLAGS "")
  set(APIKEYS_PC_REQUIRES_PRIVATE "")
  set(APIKEYS_PC_LIBS_PRIVATE "")
else()
  set(APIKEYS_PC_CFLAGS " -DAPIKEYS_STATIC_DEFINE")
  # SQLiteCpp ships no .pc file: link it by name, ahead of sqlite3 which it uses.
  set(APIKEYS_PC_REQUIRES_PRIVATE "Requires.private: libcrypto >= 3.0, sqlite3, fmt")
  set(APIKEYS_PC_LIBS_PRIVATE "Libs.private: -lSQLiteCpp -pthread")
  if(APIKEYS_WITH_POSTGRES)
    # As linked: a static libpq needs its own dependencies, which its .pc lists; a shared
    # one needs only -lpq, and Debian's libpq.pc names archives (-lpgcommon -lpgport) that
    # libpq-dev does not ship, so `pkg-config --static` through it would fail.
    if(_apikeys_pq_link MATCHES "\\.a(;|$)")
      string(APPEND APIKEYS_PC_REQUIRES_PRIVATE ", libpq")
    else()
      foreach(_apikeys_lib IN LISTS _apikeys_pq_link)
        get_filename_component(_apikeys_dir "${_apikeys_lib}" DIRECTORY)
        if(_apikeys_dir AND NOT _apikeys_dir IN_LIST CMAKE_CXX_IMPLICIT_LINK_DIRECTORIES)
          string(APPEND APIKEYS_PC_LIBS_PRIVATE " -L${_apikeys_dir}")
        endif()
      endforeach()
      string(APPEND APIKEYS_PC_LIBS_PRIVATE " -lpq")
    endif()
  endif()
  if(APIKEYS_WITH_REDIS)
    string(APPEND APIKEYS_PC_REQUIRES_PRIVATE ", hiredis")
  endif()
endif()
# The backends' PUBLIC compile definitions, as the CMake target carries them.
if(APIKEYS_WITH_POSTGRES)
  string(APPEND APIKEYS_PC_CFLAGS " -DAPIKEYS_HAS_POSTGRES=1")
endif()
if(APIKEYS_WITH_REDIS)
  string(APPEND APIKEYS_PC_CFLAGS " -DAPIKEYS_HAS_REDIS=1")
endif()
# The prefix is written at install time, so `cmake --install <dir> --prefix <p>` gets
# a .pc file that points at <p>, not at the CMAKE_INSTALL_PREFIX of the configure step.
set(APIKEYS_PC_PREFIX "@APIKEYS_PC_PREFIX@")
configure_file(cmake/apikeys.pc.in "${PROJECT_BINARY_DIR}/apikeys.pc.in" @ONLY)
install(CODE "
  set(APIKEYS_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${PROJECT_BINARY_DIR}/apikeys.pc.in\" \"${PROJECT_BINARY_DIR}/apikeys.pc\" @ONLY)
")
install(FILES "${PROJECT_BINARY_DIR}/apikeys.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
