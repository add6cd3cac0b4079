// Package policy will hold decisions, not transport: federation
// allow/block/discovery, the Intelligent IM Filter, the SIP method filter,
// rate limits and meeting admission. Nothing is implemented here yet: its
// first links arrive with the relay's peer policy (issue 3) and the Access
// Edge (issue 4).
package policy
