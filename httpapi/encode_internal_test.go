package httpapi

import "testing"

func TestHasLoneSurrogate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, raw string
		lone      bool
	}{
		{"plain", `"petya"`, false},
		{"a pair", `"\ud83d\ude00"`, false},
		{"a pair in upper case", `"\uD83D\uDE00"`, false},
		{"other escapes", `"\n\t\"\\\u00e9"`, false},
		{"an escaped backslash before u", `"\\ud800"`, false},
		{"separators before the string", ` : "\u0041"`, false},
		{"high alone", `"\ud800"`, true},
		{"low alone", `"x\udc00y"`, true},
		{"low then high", `"\udc00\ud800"`, true},
		{"high then a letter", `"\ud800a"`, true},
		{"high then a non-surrogate escape", `"\ud800\u0041"`, true},
		{"two highs", `"\ud800\ud800\udc00"`, true},
		{"high at the end of the input", `\ud800`, true},
		{"a pair after an escaped backslash", `"\\\ud83d\ude00"`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := hasLoneSurrogate([]byte(tc.raw)); got != tc.lone {
				t.Fatalf("hasLoneSurrogate(%s) = %v, want %v", tc.raw, got, tc.lone)
			}
		})
	}
}
