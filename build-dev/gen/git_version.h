#define QD_GIT_DESCRIBE "450fa2b-dirty"
