# Install rules, the exported targets, the CMake package and the pkg-config file.
include(CMakePackageConfigHelpers)

set(APIKEYS_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/apikeys" CACHE STRING
    "Where apikeysConfig.cmake is installed, relative to the prefix")

install(TARGETS apikeys
  EXPORT apikeysTargets
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/apikeys DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp")
install(FILES "${PROJECT_BINARY_DIR}/include/apikeys/version.hpp"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/apikeys)

install(EXPORT apikeysTargets NAMESPACE apikeys:: DESTINATION ${APIKEYS_CMAKE_DIR})
export(EXPORT apikeysTargets NAMESPACE apikeys::
  FILE "${PROJECT_BINARY_DIR}/apikeysTargets.cmake")

configure_package_config_file(cmake/apikeysConfig.cmake.in
  "${PROJECT_BINARY_DIR}/apikeysConfig.cmake"
  INSTALL_DESTINATION ${APIKEYS_CMAKE_DIR})
write_basic_package_version_file("${PROJECT_BINARY_DIR}/apikeysConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/apikeysConfig.cmake"
              "${PROJECT_BINARY_DIR}/apikeysConfigVersion.cmake"
  DESTINATION ${APIKEYS_CMAKE_DIR})

# pkg-config: absolute or relative install dirs both work.
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
if(BUILD_SHARED_LIBS)
  set(APIKEYS_PC_CFLAGS "")
else()
  set(APIKEYS_PC_CFLAGS "-DAPIKEYS_STATIC_DEFINE")
endif()
configure_file(cmake/apikeys.pc.in "${PROJECT_BINARY_DIR}/apikeys.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/apikeys.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
