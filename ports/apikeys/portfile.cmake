# Overlay port: builds apikeys from the source tree this port lives in
# (vcpkg install apikeys --overlay-ports=<repo>/ports). A registry port would fetch a
# release instead: vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO ... REF "v${VERSION}" SHA512 ...).
#
# scripts/ci-package.sh reads the -D options of vcpkg_cmake_configure() below and the
# feature list of vcpkg_check_features() from this file, so CI builds exactly what the
# port builds: keep one option per line.
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
    FEATURES
        tools       APIKEYS_BUILD_TOOLS
        postgres    APIKEYS_WITH_POSTGRES
        redis       APIKEYS_WITH_REDIS
)

vcpkg_cmake_configure(
    SOURCE_PATH "${SOURCE_PATH}"
    OPTIONS
        ${FEATURE_OPTIONS}
        -DAPIKEYS_BUILD_TESTS=OFF
        -DAPIKEYS_BUILD_EXAMPLES=OFF
        -DAPIKEYS_BUILD_BENCHMARKS=OFF
        -DAPIKEYS_INSTALL=ON
        -DAPIKEYS_WERROR=OFF
        -DAPIKEYS_CMAKE_DIR=share/apikeys
)

vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME apikeys CONFIG_PATH share/apikeys)
vcpkg_fixup_pkgconfig()

if("tools" IN_LIST FEATURES)
    vcpkg_copy_tools(TOOL_NAMES apikeys AUTO_CLEAN)
endif()

file(REMOVE_RECURSE
    "${CURRENT_PACKAGES_DIR}/debug/include"
    "${CURRENT_PACKAGES_DIR}/debug/share"
)

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
