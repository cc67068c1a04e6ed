OPENQASM 3.0;
include "stdgates.inc";
input float[64] theta0;
input float[64] theta1;
qubit[2] q;
ry(theta0) q[0];
ry(theta1) q[1];
cx q[0], q[1];
ry(theta0 / 2) q[1];
