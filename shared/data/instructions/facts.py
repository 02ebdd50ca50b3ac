"""The fact table the ``facts`` task asks about: a few hundred short, checkable facts we ship.

Each :class:`FactTable` has rows ``(subject, answer)`` and several question templates with a
``{s}`` slot for the subject; the generator asks every fact in several phrasings, so a held-out
question is mostly a new phrasing of a fact the model also saw in training. Answers are short
(a word or a number) so exact checks are fair to a tiny model. Everything is ASCII.

Module and builtin rows ask for the *name* given a purpose ("Which Python module reads and
writes CSV files?" -> "csv"); the ``docs`` task asks the other way round with the module's own
docstring as the answer, so the two tasks never give one question two different answers.
This module holds data only; ``families`` turns it into examples.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FactTable:
    """Facts of one kind: ``rows`` are ``(subject, answer)``; templates have a ``{s}`` slot."""

    name: str
    templates: tuple[str, ...]
    rows: tuple[tuple[str, str], ...]


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"a=b; c=d"`` -> ``(("a", "b"), ("c", "d"))``: keeps the tables below compact and readable."""
    pairs = (item.split("=") for item in text.split(";") if item.strip())
    return tuple((s.strip(), a.strip()) for s, a in pairs)


CAPITALS = FactTable("capital", (
    "What is the capital of {s}?",
    "Capital of {s}?",
    "Name the capital city of {s}.",
    "Which city is the capital of {s}?",
    "Tell me the capital of {s}.",
), _pairs("""
    France=Paris; Germany=Berlin; Italy=Rome; Spain=Madrid; Portugal=Lisbon; the United Kingdom=London;
    Ireland=Dublin; the Netherlands=Amsterdam; Belgium=Brussels; Switzerland=Bern; Austria=Vienna;
    Poland=Warsaw; Czechia=Prague; Hungary=Budapest; Greece=Athens; Sweden=Stockholm; Norway=Oslo;
    Denmark=Copenhagen; Finland=Helsinki; Iceland=Reykjavik; Russia=Moscow; Ukraine=Kyiv;
    Romania=Bucharest; Bulgaria=Sofia; Serbia=Belgrade; Croatia=Zagreb; Turkey=Ankara; Egypt=Cairo;
    Kenya=Nairobi; Nigeria=Abuja; Ghana=Accra; Ethiopia=Addis Ababa; Morocco=Rabat; Algeria=Algiers;
    Tunisia=Tunis; Senegal=Dakar; Uganda=Kampala; Japan=Tokyo; China=Beijing; South Korea=Seoul;
    North Korea=Pyongyang; India=New Delhi; Pakistan=Islamabad; Bangladesh=Dhaka; Thailand=Bangkok;
    Vietnam=Hanoi; the Philippines=Manila; Malaysia=Kuala Lumpur; Nepal=Kathmandu; Iran=Tehran;
    Iraq=Baghdad; Saudi Arabia=Riyadh; Jordan=Amman; Lebanon=Beirut; Syria=Damascus;
    Afghanistan=Kabul; Mongolia=Ulaanbaatar; Kazakhstan=Astana; the United States=Washington;
    Canada=Ottawa; Mexico=Mexico City; Cuba=Havana; Brazil=Brasilia; Argentina=Buenos Aires;
    Chile=Santiago; Peru=Lima; Colombia=Bogota; Venezuela=Caracas; Ecuador=Quito; Uruguay=Montevideo;
    Paraguay=Asuncion; Australia=Canberra; New Zealand=Wellington; Fiji=Suva; Jamaica=Kingston;
    Estonia=Tallinn; Latvia=Riga; Lithuania=Vilnius; Slovakia=Bratislava; Slovenia=Ljubljana;
    Albania=Tirana; Cyprus=Nicosia; Malta=Valletta; Qatar=Doha; Oman=Muscat; Cambodia=Phnom Penh;
    Laos=Vientiane; Zimbabwe=Harare; Zambia=Lusaka; Angola=Luanda; Sudan=Khartoum; Libya=Tripoli;
    Madagascar=Antananarivo; Mali=Bamako; Georgia=Tbilisi; Armenia=Yerevan; Azerbaijan=Baku;
    Uzbekistan=Tashkent
"""))

ELEMENTS = FactTable("symbol", (
    "What is the chemical symbol for {s}?",
    "Symbol of {s}?",
    "Give the element symbol for {s}.",
    "Which symbol stands for {s} on the periodic table?",
    "What is the symbol of the element {s}?",
), _pairs("""
    hydrogen=H; helium=He; lithium=Li; beryllium=Be; boron=B; carbon=C; nitrogen=N; oxygen=O;
    fluorine=F; neon=Ne; sodium=Na; magnesium=Mg; aluminium=Al; silicon=Si; phosphorus=P; sulfur=S;
    chlorine=Cl; argon=Ar; potassium=K; calcium=Ca; scandium=Sc; titanium=Ti; vanadium=V;
    chromium=Cr; manganese=Mn; iron=Fe; cobalt=Co; nickel=Ni; copper=Cu; zinc=Zn; gallium=Ga;
    germanium=Ge; arsenic=As; selenium=Se; bromine=Br; krypton=Kr; rubidium=Rb; strontium=Sr;
    zirconium=Zr; molybdenum=Mo; palladium=Pd; silver=Ag; cadmium=Cd; tin=Sn; antimony=Sb;
    iodine=I; xenon=Xe; cesium=Cs; barium=Ba; tungsten=W; platinum=Pt; gold=Au; mercury=Hg;
    lead=Pb; bismuth=Bi; radon=Rn; radium=Ra; uranium=U; plutonium=Pu
"""))

PLANET_ORDER = FactTable("planet_order", (
    "What is {s}'s position from the sun?",
    "Counting from the sun, which number planet is {s}?",
    "{s} is planet number what from the sun?",
    "How many planets from the sun is {s}, counting itself?",
    "Which place does {s} have in order from the sun?",
), _pairs("Mercury=1; Venus=2; Earth=3; Mars=4; Jupiter=5; Saturn=6; Uranus=7; Neptune=8"))

PLANET_BY_ORDER = FactTable("planet_by_order", (
    "Which planet is {s} from the sun?",
    "What is the {s} planet from the sun?",
    "Name the {s} planet from the sun.",
    "The {s} planet from the sun is called what?",
    "Counting from the sun, what is the {s} planet?",
), _pairs("first=Mercury; second=Venus; third=Earth; fourth=Mars; fifth=Jupiter; sixth=Saturn; "
          "seventh=Uranus; eighth=Neptune"))

MODULES = FactTable("module", (
    "Which Python module {s}?",
    "Name the standard library module that {s}.",
    "What stdlib module {s}?",
    "In Python, which module {s}?",
    "I need a module that {s}. Which one?",
), _pairs("""
    encodes and decodes JSON=json; works with regular expressions=re; makes pseudo-random numbers=random;
    handles dates and times=datetime; has sqrt and other math functions=math; runs other programs=subprocess;
    reads and writes CSV files=csv; parses command-line arguments=argparse; copies and moves files=shutil;
    treats file paths as objects=pathlib; makes temporary files=tempfile; logs messages from a program=logging;
    runs unit tests=unittest; times small code snippets=timeit; serializes objects to bytes=pickle;
    talks to SQLite databases=sqlite3; compresses files with gzip=gzip; reads and writes zip archives=zipfile;
    reads and writes tar archives=tarfile; has deque and Counter=collections; has chain and cycle=itertools;
    has partial and lru_cache=functools; runs code in threads=threading;
    runs code in separate processes=multiprocessing; runs coroutines with async and await=asyncio;
    computes SHA-256 hashes=hashlib; encodes bytes as Base64=base64; makes HTTP requests with urlopen=urllib.request;
    splits URLs into parts=urllib.parse; sends email over SMTP=smtplib; opens network sockets=socket;
    makes deep copies of objects=copy; pretty-prints data structures=pprint; wraps text to a width=textwrap;
    has constants like ascii_letters=string; does exact decimal arithmetic=decimal; handles rational numbers=fractions;
    computes means and medians=statistics; keeps a list sorted by bisection=bisect; implements a heap queue=heapq;
    defines abstract base classes=abc; creates enumerations=enum; provides type hints like Optional=typing;
    creates data classes=dataclasses; inspects live objects=inspect; prints stack traces=traceback;
    issues warnings=warnings; talks to the operating system=os; holds argv and the module path=sys;
    sleeps and reads the clock=time; prints calendars=calendar; matches names with shell patterns=fnmatch;
    finds files with wildcards=glob; makes secure random tokens=secrets; generates UUIDs=uuid;
    has thread-safe queues=queue; disassembles bytecode=dis; debugs programs step by step=pdb;
    parses source code into a syntax tree=ast; shows differences between texts=difflib;
    reads INI configuration files=configparser; works with IP addresses=ipaddress; guesses MIME types=mimetypes;
    has helpers for with statements=contextlib; holds weak references=weakref; has StringIO and BytesIO=io;
    packs binary data into bytes=struct; stores objects in a persistent dict=shelve; opens a web browser=webbrowser;
    escapes HTML text=html; splits shell command lines=shlex; reads passwords without echo=getpass;
    profiles where a program spends time=cProfile
"""))

BUILTINS = FactTable("builtin", (
    "Which built-in function {s}?",
    "Name the Python builtin that {s}.",
    "What builtin {s}?",
    "In Python, which built-in {s}?",
    "I want a builtin that {s}. Which one?",
), _pairs("""
    returns the number of items in a container=len; writes text to standard output=print;
    reads a line typed by the user=input; produces a sequence of integers=range; returns a new sorted list=sorted;
    returns a reverse iterator=reversed; pairs each item with its index=enumerate;
    pairs up items from several iterables=zip; applies a function to every item=map;
    keeps the items a function accepts=filter; adds up numbers=sum; returns the smallest item=min;
    returns the largest item=max; returns the absolute value=abs; rounds a number=round;
    converts a value to an integer=int; converts a value to a string=str; converts a value to a float=float;
    returns the type of an object=type; checks the class of an object=isinstance; opens a file=open;
    returns the identity of an object=id; returns the hash of an object=hash; lists the names in an object=dir;
    returns True if any item is true=any; returns True if every item is true=all;
    turns a code point into a character=chr; turns a character into its code point=ord;
    returns quotient and remainder=divmod; raises a number to a power=pow; gets an iterator from an object=iter;
    gets the next item of an iterator=next; checks whether an object can be called=callable;
    reads an attribute by name=getattr; sets an attribute by name=setattr;
    writes an integer in hexadecimal=hex; writes an integer in binary=bin; returns a printable representation=repr
"""))

OPPOSITES = FactTable("opposite", (
    "What is the opposite of {s}?",
    "Opposite of {s}?",
    "Give the antonym of {s}.",
    "Which word means the opposite of {s}?",
    "Name a word that is the opposite of {s}.",
), _pairs("""
    hot=cold; big=small; fast=slow; up=down; left=right; happy=sad; dark=light; open=closed; early=late;
    full=empty; hard=soft; high=low; young=old; long=short; wet=dry; rich=poor; strong=weak; thick=thin;
    loud=quiet; push=pull; win=lose; true=false; start=stop; begin=end; buy=sell; inside=outside;
    question=answer; day=night; north=south; east=west; always=never; first=last; above=below;
    friend=enemy; cheap=expensive; clean=dirty; remember=forget; arrive=leave; accept=reject
"""))

TABLES: tuple[FactTable, ...] = (CAPITALS, ELEMENTS, PLANET_ORDER, PLANET_BY_ORDER, MODULES, BUILTINS, OPPOSITES)
