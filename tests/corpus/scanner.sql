-- Query strings where a SQL lexer other than PostgreSQL's may disagree with the server
-- about where statements start and end, or what they are. Written from PostgreSQL's
-- lexical rules (scan.l and the "Lexical Structure" chapter), in the spirit of the
-- regression tests for strings, comments, dollar quoting and Unicode escapes. Read by
-- tests/e2e/completeness/generator.rs::corpus: each entry starts with a line
-- "=== name" and ends before the next one (its last line break is not part of it).
-- <CR>, <FF>, <VT> and <NBSP> stand for a carriage return, a form feed, a vertical tab
-- and a no-break space. The table probe (id int, note text) holds ids 1 to 20.
-- Entries may be invalid on purpose: the server's own answer is the reference.
=== plain
SELECT 1
=== empty statements only
;
=== empty select list twice
SELECT;SELECT;
=== nested comment hides a delete
SELECT 1 /* /* */ ; DELETE FROM probe WHERE id = 1; */ AS one
=== nested comment with sql both sides
SELECT 1 /* a /* b */ c */ + /* /* /* deep */ */ */ 1
=== nested comment never closed
SELECT 1 /* /* */; DELETE FROM probe WHERE id = 1; SELECT 2 /* */
=== unterminated comment
SELECT 1 /* unterminated
=== comment closed twice
SELECT 1 /* a */ */
=== line comment ended by a carriage return
SELECT 1; --c<CR>DELETE FROM probe WHERE id = 2
=== line comment ended by a carriage return mid statement
SELECT 1 -- c<CR>+ 1, 'after cr'
=== update after carriage return comment
SELECT 1 --<CR>; UPDATE probe SET note = 'cr' WHERE id = 10
=== star slash star
SELECT 2 */*c*/ 3
=== minus slash star
SELECT 2 -/*c*/ 3
=== slash slash star
SELECT 7 //* c */ 2
=== plus dash dash
SELECT 1 +-- c
 2
=== less dash dash
SELECT 1 <-- c
 2
=== three dashes are a comment
SELECT 3 ---c
 AS x
=== at dash dash
SELECT @--c
 -5
=== times minus
SELECT 2 *-1, 2*-/**/1, 2 * - 1
=== comment between semicolons
SELECT 1 /**/;/**/ SELECT 2
=== leading and trailing comments
/* leading */ SELECT 1; /* trailing */
=== only a line comment
-- only a comment
=== only comments and semicolons
/* only */ ; /* comments */ ; -- and a line
=== line comment at the very end
SELECT 1 -- the string ends inside this comment
=== comments everywhere
SELECT/**/count(/**/*/**/)/**/FROM/* x */probe/**/WHERE/**/id/**/=/**/1
=== comment lookalikes in strings
SELECT '/*', '--', '*/'; SELECT 2 /* '*/
=== doubled quote
SELECT 'it''s; DELETE FROM probe; --'
=== backslash ends a standard string
SELECT 'a\'; DELETE FROM probe WHERE id = 3; SELECT '\'
=== escape string quote
SELECT E'\''; DELETE FROM probe WHERE id = 4; SELECT E'\''
=== escape string swallows a delete
SELECT e'\'; DELETE FROM probe WHERE id = 14; --'
=== escape string escapes
SELECT E'a\nb', E'\x41\101\u00e9\U0001F980', E'\\'
=== adjacent strings are an error
SELECT 'a' 'b'
=== strings continue across a newline
SELECT 'a'
'b', 'c'
  'd'
=== strings continue across a line comment
SELECT 'a' -- c
'b'
=== a C comment does not continue a string
SELECT 'a' /* c */
'b'
=== strings continue across a carriage return
SELECT 'a'<CR>'b'
=== national string
SELECT N'national', n'x' || 'y'
=== bit strings
SELECT B'1010', b'1', X'1F', x'ff'
=== bad bit string
SELECT B'102'
=== unicode string
SELECT U&'d\0061t\+000061', u&'\00e9'
=== unicode string with uescape
SELECT U&'d!0061t!+000061' UESCAPE '!'; SELECT 2
=== unicode surrogate pair
SELECT U&'\D83D\DE00'
=== bad unicode escape
SELECT U&'\zzzz'
=== bad uescape character
SELECT U&'wrong' UESCAPE '+'
=== uescape after a plain string
SELECT 'x' UESCAPE '!'
=== uescape then a delete
SELECT U&'a' UESCAPE '!' ; DELETE FROM probe WHERE id = 5
=== unicode identifier
SELECT U&"d\0061t\+000061" FROM (SELECT 1 AS data) s
=== unicode identifier with uescape
SELECT 1 AS U&"!0041b" UESCAPE '!', 2
=== quoted identifiers with quotes
SELECT 1 AS "a""b;c", 2 AS """", 3 AS "/*", 4 AS "--"
=== zero length identifier
SELECT 1 AS ""
=== unterminated identifier
SELECT "unterminated
=== unterminated string
SELECT 'unterminated
=== unterminated dollar string
SELECT $$unterminated
=== dollar string with sql
SELECT $$a; DELETE FROM probe; b$$
=== dollar tags nest others
SELECT $a$ $$ ; $b$ $a$
=== dollar tags of underscore and digits
SELECT $_$x$_$, $a1$y$a1$
=== dollar tags of multibyte letters
SELECT $é$ ; $é$, $日本$;$日本$
=== dollar tag that is a keyword
SELECT $DELETE$; DELETE FROM probe; $DELETE$
=== dollar tags are case sensitive
SELECT $A$ $a$ ; $A$
=== dollar string touching a keyword
SELECT $a$x$a$AS y
=== empty dollar string
SELECT $$$$, $$ $ $$
=== dollar after a parameter number
SELECT $1$x$1$
=== identifiers holding dollars
SELECT 1 AS x$a$, 2; SELECT 3 AS y$a$
=== identifiers ending in two dollars
SELECT 1 AS q$$, 2; SELECT 3 AS r$$
=== dollar identifiers around a delete
SELECT 1 AS x$a$; DELETE FROM probe WHERE id = 6; SELECT 2 AS y$a$
=== dollar identifiers around an update
SELECT 1 AS x$a$; UPDATE probe SET note = 'dollar' WHERE id = 13; SELECT 2 AS y$a$
=== casts
SELECT '1'::int + 1::int8, 'a'::varchar(3)::text, '{1,2}'::int[] @> ARRAY[1]
=== spaced and commented casts
SELECT 1 :: int, 1::/* c */int, '2' ::
text
=== operators
SELECT |/ 25.0, ||/ 27, @ -5, 5 # 3, ~5, 2 ^ 3, 7 % 3, 1 << 4
=== regex operators
SELECT 'a' ~ 'a', 'a' !~ 'b', 'A' ~* 'a', 1 != 2, 1 <> 2, NOT true
=== hex integer
SELECT 0x1F
=== underscores in numbers
SELECT 1_000
=== number forms
SELECT .5e-3, 1.e2, 2., 007
=== multibyte literals and identifiers
SELECT 'é', '日本語', '🦀👩‍💻' AS "emoji 🦀"; SELECT 1 AS café
=== multibyte unquoted identifiers
SELECT 1 AS 日本; SELECT 2 AS 🦀
=== semicolons in multibyte identifiers
SELECT 'a;b' AS "日本;語"; SELECT 'é'
=== multibyte comments
/* 日本 */ SELECT 1; -- 🦀
SELECT 2
=== no-break space is part of an alias
SELECT 1<NBSP>; SELECT 2
=== no-break space after a keyword
SELECT<NBSP>1
=== no-break space before a delete
SELECT 1;<NBSP>DELETE FROM probe WHERE id = 7
=== form feed is a blank
SELECT 1<FF>+<FF>1
=== vertical tab
SELECT 1<VT>+ 1
=== carriage returns between statements
SELECT 1<CR>; SELECT 2<CR><CR>
=== update between empty comments
SELECT 1 /* */ ; UPDATE probe SET note = 'x' WHERE id = 8 /* */
=== quote in a line comment
SELECT 'x' -- '; DELETE FROM probe
; DELETE FROM probe WHERE id = 9
=== insert of a dollar string
INSERT INTO probe VALUES (2000, $a$; DROP TABLE probe; $a$)
=== update with an escape string
UPDATE probe SET note = E'\'; DELETE FROM probe; --' WHERE id = 11
=== delete with a unicode quote
DELETE FROM probe WHERE note = U&'\0027; DELETE FROM probe; --'
=== delete in a with clause
WITH d AS (DELETE FROM probe WHERE id = 12 RETURNING *) SELECT count(*) FROM d
=== comment and quote decoys around a delete
SELECT 'a' /* ; */ ; /* ' */ DELETE FROM probe WHERE id = 15
=== setting then delete
SET application_name = 'x'; DELETE FROM probe WHERE id = 16
=== keywords as labels
SELECT 1 AS delete, 2 AS "from"; SELECT 3 AS update
=== keyword label then update
SELECT 1 AS update; UPDATE probe SET note = 'kw' WHERE id = 17
=== settings with odd strings
SET application_name = U&'\00e9'; SET application_name TO $$dollar; app$$; RESET application_name; SHOW application_name
=== table statement
TABLE probe
=== runtime error stops the string
SELECT 1; SELECT 1/0; SELECT 3
=== trailing semicolon in a single statement
SELECT 1;
=== trailing comment after a single statement
SELECT 1; -- c
=== comments around a single statement
/* c */ SELECT 1 /* c */
=== operator glued to a comment hides a quote
SELECT 1 <</* ' */ 2; DELETE FROM probe WHERE id = 18; SELECT 1 <</* ' */ 2
=== operator glued to a line comment hides a quote
SELECT 1 #-- '
 2; DELETE FROM probe WHERE id = 19; SELECT 1 #-- '
 2
=== operator glued to a nested comment
SELECT 1 -/* /* */ ; DELETE FROM probe WHERE id = 20; */ 2
=== backslash in a string with another escape character
SELECT U&'a\b' UESCAPE '!'; DELETE FROM probe WHERE id = 1
=== surrogate pair then a delete
SELECT U&'\D83D\DE00'; DELETE FROM probe WHERE id = 2
